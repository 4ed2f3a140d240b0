"""Study 000's reconstructor and metric: architecture, overfitting, exact resumption after a
kill, confidence intervals, paired differences and the operator evaluation."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cliplens import inversion as inv  # noqa: E402
from cliplens.inversion import (  # noqa: E402
    BatchPlan,
    PairSource,
    Reconstructor,
    load_checkpoint,
    load_reconstructor,
    lr_factor,
    mean_ci,
    save_reconstructor,
    summarise_similarity,
    train_reconstructor,
)

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest (and reproducibly) on one thread, even on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(width=32, depth=1, heads=4, mlp_ratio=2.0, channels=(32, 16, 8), res_blocks=1)


class IndexDataset:
    """image(i) -> i, so PairSource's target function can index a tensor."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def image(self, i):
        return i


def smooth_images(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def make_source(n=4, P=16, D=24, seed=0):
    tok = np.random.default_rng(seed).standard_normal((n, P, D)).astype(np.float32)
    imgs = smooth_images(n)
    return PairSource(tok, IndexDataset(n), lambda ims: imgs[list(ims)]), imgs


def make_net(seed=0, D=24):
    torch.manual_seed(seed)
    return Reconstructor(D, (4, 4), 32, **TINY)


def test_reconstructor_shapes_and_stages():
    net = make_net()
    assert len(net.up) == 3  # 32 / 4 = 8 = 2^3: the last three channel widths
    out = net(torch.randn(2, 16, 24))
    assert out.shape == (2, 3, 32, 32)
    # tokens are L2-normalised inside: scaling them changes nothing
    x = torch.randn(2, 16, 24)
    assert torch.allclose(net(x), net(7.0 * x), atol=1e-5)
    assert len(Reconstructor(24, (8, 8), 32, **TINY).up) == 2
    with pytest.raises(ValueError, match="power of two"):
        Reconstructor(24, (4, 4), 24, **TINY)
    with pytest.raises(ValueError, match="channel widths"):
        Reconstructor(24, (2, 2), 64, **TINY)
    with pytest.raises(ValueError, match="expects 4x4"):
        net(torch.randn(1, 9, 24))


def test_reconstructor_overfits_a_handful_of_images():
    source, imgs = make_source()
    net = make_net()
    with torch.no_grad():
        first = float(F.mse_loss(net(torch.from_numpy(source._tokens)), imgs))
    rec = train_reconstructor(net, source, steps=150, batch_size=4, lr=3e-3, warmup=0.05,
                              progress=False)
    with torch.no_grad():
        last = float(F.mse_loss(net(torch.from_numpy(source._tokens)), imgs))
    assert last < first / 10, (first, last, rec["history"][-3:])


class Killed(Exception):
    pass


def test_killed_training_resumes_to_the_uninterrupted_weights(tmp_path):
    kw = dict(steps=12, batch_size=3, lr=3e-3, warmup=0.2, weight_decay=0.01, grad_clip=1.0,
              seed=5, progress=False, sample_every=4, checkpoint_every=4)
    source, imgs = make_source(n=7)
    sample = (torch.from_numpy(source._tokens[:2]), imgs[:2])

    ref = make_net(seed=1)
    rec_ref = train_reconstructor(ref, source, checkpoint_dir=tmp_path / "a", sample=sample, **kw)

    def kill(step):
        if step == 6:
            raise Killed

    killed = make_net(seed=1)
    with pytest.raises(Killed):
        train_reconstructor(killed, source, checkpoint_dir=tmp_path / "b", sample=sample,
                            on_step=kill, **kw)
    ckpt = load_checkpoint(tmp_path / "b" / inv.CHECKPOINT_FILE)  # weights_only=True
    assert ckpt["step"] == 4
    resumed = make_net(seed=1)  # a fresh process: fresh weights, resumed from the checkpoint
    rec = train_reconstructor(resumed, source, checkpoint_dir=tmp_path / "b", sample=sample, **kw)
    assert rec["resumed_from"] == 4
    a, b = ref.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rec["history"] == rec_ref["history"] and rec["val_history"] == rec_ref["val_history"]
    assert (tmp_path / "b" / "samples" / "step_000012.png").exists()
    # a finished run resumes at its end; another configuration ignores the checkpoint
    again = make_net(seed=1)
    assert train_reconstructor(again, source, checkpoint_dir=tmp_path / "b",
                               **kw)["resumed_from"] == 12
    other = train_reconstructor(make_net(seed=1), source, checkpoint_dir=tmp_path / "b",
                                **{**kw, "lr": 1e-3})
    assert other["resumed_from"] is None


def test_saved_reconstructor_loads_back(tmp_path):
    net = make_net(seed=3)
    save_reconstructor(net, {"layer": -2}, tmp_path)
    back, meta = load_reconstructor(tmp_path)
    x = torch.randn(2, 16, 24)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), back(x))
    assert meta["layer"] == -2 and meta["config"]["grid"] == [4, 4]


def test_schedule_and_batch_plan():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, min_factor=0.1) == pytest.approx(0.1)
    plan = BatchPlan(10, 3, seed=2)
    epoch = sum((plan.rows(s) for s in range(3)), [])
    assert len(set(epoch)) == 9  # a permutation, the incomplete last batch dropped
    assert BatchPlan(10, 3, seed=2).rows(4) == plan.rows(4) != BatchPlan(10, 3, seed=3).rows(4)


def test_mean_ci_is_the_t_interval():
    from scipy import stats

    x = np.random.default_rng(0).normal(0.7, 0.1, 40)
    got = mean_ci(x)
    lo, hi = stats.t.interval(0.95, 39, loc=x.mean(), scale=stats.sem(x))
    assert got["ci_low"] == pytest.approx(lo) and got["ci_high"] == pytest.approx(hi)
    assert np.isnan(mean_ci([0.5])["ci_low"])


def test_summary_and_paired_differences():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 0.8, 30)
    rows = []
    for spec, shift in (("toy:siglip-32", 0.0), ("toy:siglip2-32", 0.05), ("toy:siglip-64", 0.02)):
        rows += [{"scorer": "s", "variant": "colour", "extractor": spec, "image": i,
                  "cosine": b + shift} for i, b in enumerate(base)]
    info = {"toy:siglip-32": {"group": "SigLIP", "resolution": 32},
            "toy:siglip2-32": {"group": "SigLIP2", "resolution": 32},
            "toy:siglip-64": {"group": "SigLIP", "resolution": 64}}
    summary, diff = summarise_similarity(rows, info)
    assert len(summary) == 3 and set(summary.ci_method) == {"t, 95%"}
    assert len(diff) == 1  # no SigLIP2 at 64 px
    d = diff.iloc[0]
    assert d.resolution == 32 and d.comparison == "SigLIP2 - SigLIP"
    assert d["mean"] == pytest.approx(0.05) and d.second_better_share == 1.0


def test_similarity_of_an_image_with_itself_is_one():
    from test_tokens import tiny_siglip

    scorer = tiny_siglip()
    imgs = [Image.fromarray(a) for a in
            np.random.default_rng(0).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)]
    rows = inv.similarity_rows(scorer, imgs, {"same": imgs, "flipped": imgs[::-1]},
                               variants=("grayscale", "colour"))
    same = [r["cosine"] for r in rows if r["extractor"] == "same"]
    assert np.allclose(same, 1.0, atol=1e-5) and len(rows) == 12
    assert min(r["cosine"] for r in rows if r["extractor"] == "flipped") < 0.9999


class ArrayTokens:
    """A stand-in for TokenCache over an in-memory array."""

    def __init__(self, a):
        self.a = a

    def __len__(self):
        return len(self.a)

    def load(self):
        return self.a

    def read(self, rows):
        return self.a[np.asarray(rows)].astype(np.float32)


def test_operator_evaluation_on_an_exact_rotation():
    from scipy.stats import ortho_group

    D, P = 24, 16
    rng = np.random.default_rng(0)
    Q = ortho_group.rvs(D, random_state=0)
    x_tr, x_te = rng.standard_normal((40, P, D)), rng.standard_normal((5, P, D))
    x_tr /= np.linalg.norm(x_tr, axis=-1, keepdims=True)
    x_te /= np.linalg.norm(x_te, axis=-1, keepdims=True)
    train = {"images": ArrayTokens(x_tr), "images_rb_swap": ArrayTokens(x_tr @ Q)}
    test = {"images": ArrayTokens(x_te), "images_rb_swap": ArrayTokens(x_te @ Q)}
    fitted = inv.fit_colour_operators(train, {"rb_swap": ["procrustes", "symmetric", "linear"]})
    assert np.allclose(fitted["rb_swap"]["procrustes"][0], Q, atol=1e-8)
    images = {"images": smooth_images(5), "images_rb_swap": smooth_images(5).flip(1)}
    rows, arrays = inv.evaluate_colour_operators(fitted, test, images, make_net(D=D),
                                                 n_examples=2)
    by = {r["kind"]: r for r in rows}
    assert set(by) == {"none", "true", "procrustes", "symmetric", "linear"}
    assert by["true"]["r2"] == pytest.approx(1.0) and by["procrustes"]["r2"] == pytest.approx(1.0)
    assert by["procrustes"]["mse_vs_transformed"] == pytest.approx(
        by["true"]["mse_vs_transformed"], abs=1e-6)
    assert by["procrustes"]["eig_mean_modulus"] == pytest.approx(1.0)
    assert arrays["rb_swap/recon/linear"].shape == (2, 32, 32, 3)
    assert arrays["rb_swap/procrustes/eig"].shape == (D,)


def test_online_source_encodes_the_pixels_it_serves(tmp_path):
    from test_tokens import ArrayDataset, tiny_siglip

    from cliplens.tokens import encode_tokens

    model = tiny_siglip()
    ds = ArrayDataset(np.random.default_rng(0).integers(0, 256, (10, 40, 40, 3), dtype=np.uint8))
    targets = inv.target_transform(model)

    def encode(px):
        return encode_tokens(model, px, -2)

    src = PairSource(None, ds, targets, encode=encode)
    px, tgt = src[[3, 1]]
    assert torch.equal(px, model.preprocess(ds.images(3, 4) + ds.images(1, 2)))
    assert torch.allclose(tgt, px, atol=1e-6)  # SigLIP: mean = std = 0.5, so the target is the input
    with torch.no_grad():
        assert torch.allclose(src.tokens([3, 1]), encode(px), atol=1e-6)
    net = Reconstructor(32, (4, 4), 32, **TINY)
    rec = train_reconstructor(net, src, steps=3, batch_size=4, lr=1e-3, progress=False,
                              checkpoint_dir=tmp_path)
    assert rec["steps"] == 3 and np.isfinite(rec["final_loss"])
    assert not torch.equal(net.token_whiten, torch.eye(32))  # whitening fitted on encoded tokens
