"""Toy model training: every family builds, learns, saves in its library's format and loads back
through the registry with identical embeddings; the losses match their formulas; SigLIP2's image
objective trains the vision tower through its patch tokens."""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cliplens import toyworld  # noqa: E402
from cliplens.config import ConfigError, load_config, validate_config  # noqa: E402
from cliplens.models import toy as toymod  # noqa: E402
from cliplens.models.toy import (  # noqa: E402
    ToyConfigError,
    build_toy_model,
    fit,
    lr_factor,
    toy_model_config,
    train_toy_model,
)
from cliplens.models.toy_objectives import (  # noqa: E402
    PatchPixelObjective,
    caption_match,
    patchify,
    sigmoid_loss,
    softmax_contrastive_loss,
)
from cliplens.models.toy_text import build_toy_tokenizer, toy_vocabulary  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_TINY_VIT = {"width": 32, "layers": 1, "heads": 2, "patch_size": 8}
_TINY_TEXT = {"width": 32, "layers": 1, "heads": 2, "context_length": 24}
_TINY_TRAIN = {"steps": 5, "batch_size": 32, "lr": 0.003, "warmup": 0.2, "seed": 0}

#: one tiny config per kind of toy model
TINY = {
    "clip-vit": {"library": "open_clip", "family": "clip", "arch": "vit", "image_size": 16,
                 "embed_dim": 32, "vision": _TINY_VIT, "text": _TINY_TEXT, "train": _TINY_TRAIN},
    "clip-vit-sincos": {"library": "open_clip", "family": "clip", "arch": "vit", "image_size": 16,
                        "embed_dim": 32, "vision": dict(_TINY_VIT, patch_size=4, pos_embed="sin_cos_2d"),
                        "text": _TINY_TEXT, "train": _TINY_TRAIN},
    "clip-rn": {"library": "open_clip", "family": "clip", "arch": "resnet", "image_size": 32,
                "embed_dim": 32, "vision": {"width": 8, "layers": [1, 1, 1, 1], "heads": 2},
                "text": _TINY_TEXT, "train": _TINY_TRAIN},
    "siglip": {"library": "transformers", "family": "siglip", "image_size": 16, "embed_dim": 32,
               "vision": _TINY_VIT, "text": _TINY_TEXT, "train": _TINY_TRAIN},
    "siglip2": {"library": "transformers", "family": "siglip2", "image_size": 16,
                "embed_dim": 32, "vision": _TINY_VIT, "text": _TINY_TEXT, "train": _TINY_TRAIN,
                "image_objective": {"kind": "pixel", "weight": 1.0}},
    "siglip2-masked": {"library": "transformers", "family": "siglip2", "image_size": 16,
                       "embed_dim": 32, "vision": _TINY_VIT, "text": _TINY_TEXT,
                       "train": _TINY_TRAIN,
                       "image_objective": {"kind": "masked", "weight": 1.0, "hidden": 16}},
}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def splits():
    cfg = load_config(os.path.join(ROOT, "config.yaml"))["toy"]
    cfg = dict(cfg, splits={"train": 200, "val": 60, "test": 1})
    out = toyworld.generate("toy", cfg, splits=("train", "val"))
    return {
        name: {"images": s.images, "labels": s.labels, "captions_rich": s.captions_rich,
               "captions_poor": s.captions_poor}
        for name, s in out.items()
    }


# --- losses ----------------------------------------------------------------------------------


def test_sigmoid_loss_matches_hand_computation_on_2x2():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits z = 2 <x_i, y_j> - 1 = [[1, 0.2], [-1, 0.6]]; labels +1 on the diagonal, -1 off it
    def logsig(x):
        return -math.log1p(math.exp(-x))

    expected = -(logsig(1.0) + logsig(-0.2) + logsig(1.0) + logsig(0.6)) / 2
    got = sigmoid_loss(img, txt, torch.tensor(2.0), torch.tensor(-1.0))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_sigmoid_loss_equals_open_clip_siglip_loss():
    from open_clip.loss import SigLipLoss

    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(7, 5, generator=g), dim=-1)
    txt = F.normalize(torch.randn(7, 5, generator=g), dim=-1)
    ours = sigmoid_loss(img, txt, torch.tensor(10.0), torch.tensor(-10.0))
    ref = SigLipLoss()(img, txt, torch.tensor(10.0), torch.tensor(-10.0))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


def test_softmax_contrastive_loss_is_symmetric_cross_entropy():
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    z = 3.0 * img @ txt.T
    labels = torch.arange(6)
    expected = 0.5 * (F.cross_entropy(z, labels) + F.cross_entropy(z.T, labels))
    assert softmax_contrastive_loss(img, txt, 3.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_multi_positive_loss_is_clips_with_identity_match_and_follows_its_formula():
    g = torch.Generator().manual_seed(2)
    img = F.normalize(torch.randn(3, 4, generator=g), dim=-1)
    txt = F.normalize(torch.randn(3, 4, generator=g), dim=-1)
    eye = torch.eye(3, dtype=torch.bool)
    assert softmax_contrastive_loss(img, txt, 5.0, eye).item() == pytest.approx(
        softmax_contrastive_loss(img, txt, 5.0).item(), rel=1e-6)
    # caption 2 is true of images 1 and 2; caption 0 of images 0 and 2
    m = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 0, 1]], dtype=torch.bool)
    z = (5.0 * img @ txt.T).double().numpy()
    lsm_rows = z - np.log(np.exp(z).sum(1, keepdims=True))  # log softmax over captions
    lsm_cols = z - np.log(np.exp(z).sum(0, keepdims=True))  # over images
    mm = m.numpy().astype(float)
    per_image = -(lsm_rows * mm / mm.sum(1, keepdims=True)).sum(1).mean()
    per_text = -(lsm_cols * mm / mm.sum(0, keepdims=True)).sum(0).mean()
    got = softmax_contrastive_loss(img, txt, 5.0, m).item()
    assert got == pytest.approx(0.5 * (per_image + per_text), rel=1e-5)
    with pytest.raises(ValueError, match="diagonal"):
        softmax_contrastive_loss(img, txt, 5.0, ~eye)


def test_caption_match_is_true_where_every_named_factor_agrees():
    labels = torch.tensor([[0, 1, 2], [0, 3, 2], [1, 1, 2]])  # 3 images x 3 factors
    named = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 0]], dtype=torch.bool)
    m = caption_match(labels, named)
    # caption 0 names everything: image 0 only; caption 1 names factor 0 (= 0): images 0, 1;
    # caption 2 names factor 1 (= 1): images 0, 2
    assert m.tolist() == [[True, True, True], [False, True, False], [False, False, True]]
    assert caption_match(labels, torch.ones(3, 3, dtype=torch.bool)).equal(torch.eye(3, dtype=torch.bool))


def test_patchify_follows_the_vit_token_grid():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    p = patchify(x, 2)
    assert p.shape == (2, 4, 12)
    # token 1 is the top-right 2x2 block; inside it pixel (0, 1), channel 2 is entry (0*2+1)*3+2
    assert p[1, 1, (0 * 2 + 1) * 3 + 2] == x[1, 2, 0, 3]
    # the same order as a stride-p convolution flattened row-major
    conv = torch.nn.Conv2d(3, 12, 2, stride=2, bias=False)
    with torch.no_grad():
        # weight [12, 3, 2, 2] that copies each pixel to its patchify slot
        conv.weight.zero_()
        for i in range(2):
            for j in range(2):
                for c in range(3):
                    conv.weight[(i * 2 + j) * 3 + c, c, i, j] = 1.0
        ref = conv(x).flatten(2).transpose(1, 2)
    assert torch.equal(ref, p)


def test_lr_schedule_warms_up_then_decays_to_zero():
    vals = [lr_factor(s, 100, 10) for s in range(100)]
    assert vals[0] == pytest.approx(0.1) and vals[9] == pytest.approx(1.0)
    assert vals[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(vals[10:], vals[11:]))
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


# --- tokenizer ---------------------------------------------------------------------------------


def test_toy_tokenizer_covers_the_toy_language_and_pads_to_max_length():
    tok = build_toy_tokenizer(24)
    unk = tok.convert_tokens_to_ids("[UNK]")
    texts = [t.format(c) for f in toyworld.ZEROSHOT_TEMPLATES
             for c in toyworld.classnames(f) for t in toyworld.ZEROSHOT_TEMPLATES[f]]
    rng = np.random.default_rng(0)
    labels = toyworld.sample_labels(200, rng)
    texts += [toyworld.rich_caption({f: int(labels[f][i]) for f in labels}, rng) for i in range(200)]
    enc = tok(texts, padding="max_length", truncation=True, max_length=24)["input_ids"]
    assert all(len(ids) == 24 for ids in enc)
    assert not any(unk in ids for ids in enc)
    eos = tok.convert_tokens_to_ids("[EOS]")
    assert all(ids.count(eos) == 1 for ids in enc)
    assert "crimson" in toy_vocabulary() and "[PAD]" not in toy_vocabulary()


# --- config ------------------------------------------------------------------------------------


def test_default_config_validates_and_names_every_toy_model():
    cfg = load_config(os.path.join(ROOT, "config.yaml"))
    names = set(cfg["toy_models"])
    assert {"clip-vit", "clip-vit-poor", "clip-rn", "siglip-32", "siglip-64",
            "siglip2-32", "siglip2-64"} <= names
    for name, entry in cfg["toy_models"].items():
        toy_model_config(name, entry)  # cross-key constraints hold
    fams = {n: cfg["toy_models"][n]["family"] for n in names}
    assert fams["siglip2-32"] == "siglip2" and fams["clip-rn"] == "clip"


def test_config_typo_names_the_bad_key():
    raw = yaml.safe_load(open(os.path.join(ROOT, "config.yaml")))
    raw["toy_models"]["clip-vit"].setdefault("train", {})["stpes"] = 3
    with pytest.raises(ConfigError, match=r"toy_models\.clip-vit\.train.*stpes"):
        validate_config(raw)


@pytest.mark.parametrize("patch, match", [
    ({"family": "siglip2", "image_objective": {"kind": "none"}}, "image_objective.kind"),
    ({"image_objective": {"kind": "pixel"}}, "only family siglip2"),
    ({"embed_dim": 48}, "embed_dim"),
    ({"library": "open_clip"}, "family"),
    ({"vision": {"patch_size": 5}}, "patch_size"),
    ({"vision": {"pos_embed": "sin_cos_2d"}}, r"vision\.pos_embed.*open_clip ViT option"),
    ({"vision": {"pos_embed": "rope"}}, r"vision\.pos_embed"),
    ({"train": {"partial_captions": {"fraction": 0.5}}}, r"train\.partial_captions\.fraction.*clip-family"),
])
def test_inconsistent_toy_configs_fail_with_the_key(patch, match):
    cfg = copy.deepcopy(TINY["siglip"])
    for k, v in patch.items():
        cfg[k] = dict(cfg.get(k, {}), **v) if isinstance(v, dict) else v
    with pytest.raises(ToyConfigError, match=match):
        toy_model_config("x", cfg)


def test_sin_cos_pos_embed_is_an_open_clip_vit_option_only():
    cfg = toy_model_config("x", TINY["clip-vit-sincos"])
    model_cfg, _ = toymod.open_clip_configs(cfg)
    assert model_cfg["vision_cfg"]["pos_embed_type"] == "sin_cos_2d"
    assert toymod.open_clip_configs(toy_model_config("x", TINY["clip-vit"]))[0][
        "vision_cfg"]["pos_embed_type"] == "learnable"
    rn = copy.deepcopy(TINY["clip-rn"])
    rn["vision"] = dict(rn["vision"], pos_embed="sin_cos_2d")
    with pytest.raises(ToyConfigError, match=r"clip-rn\.vision\.pos_embed"):
        toy_model_config("clip-rn", rn)


def test_sin_cos_pos_embed_is_fixed_during_training():
    from open_clip.pos_embed import get_2d_sincos_pos_embed

    torch.manual_seed(0)
    toy = build_toy_model("s", TINY["clip-vit-sincos"])
    pe = toy.model.visual.positional_embedding
    expect = torch.from_numpy(get_2d_sincos_pos_embed(32, 4, cls_token=True)).float()
    assert not pe.requires_grad and torch.equal(pe.detach(), expect)
    assert all(p is not pe for _, p in toy.parameters() if p.requires_grad)
    rng = np.random.default_rng(0)
    split = toyworld.draw_split(toyworld.sample_labels(8, rng), rng)
    fit(toy, toy.preprocess(split.images), toy.tokenize(split.captions_rich),
        dict(toy.cfg["train"], steps=3, batch_size=8), progress=False)
    assert torch.equal(toy.model.visual.positional_embedding.detach(), expect)


# --- training, saving, loading -----------------------------------------------------------------


def _overfit(kind: str, steps: int = 25) -> list[float]:
    """Loss per step when training on one fixed batch of 8 pairs."""
    torch.manual_seed(0)
    cfg = copy.deepcopy(TINY[kind])
    toy = build_toy_model(kind, cfg)
    rng = np.random.default_rng(0)
    labels = toyworld.sample_labels(8, rng)
    split = toyworld.draw_split(labels, rng)
    pixels = toy.preprocess(split.images)
    tokens = toy.tokenize(split.captions_rich)
    train = dict(toy.cfg["train"], steps=steps, batch_size=8, lr=0.003, warmup=0.0)
    res = fit(toy, pixels, tokens, train, progress=False)
    return [v for _, v in res["loss_history"]]


@pytest.mark.parametrize("kind", ["clip-vit", "siglip"])
def test_math_attention_kernel_trains_the_same_model(kind):
    """fit(attention="math") swaps only the kernel of softmax(QK^T/sqrt d)V: one batch gives
    the same loss and gradients under either kernel, and the same steps from the same start
    give the same losses, up to float rounding."""
    rng = np.random.default_rng(0)
    split = toyworld.draw_split(toyworld.sample_labels(8, rng), rng)
    torch.manual_seed(0)
    toy = build_toy_model(kind, copy.deepcopy(TINY[kind]))
    pixels, tokens = toy.preprocess(split.images), toy.tokenize(split.captions_rich)
    grads, losses = {}, {}
    for backend in toymod.ATTENTION_BACKENDS:
        with toymod.attention_backend(backend):
            loss, _ = toy.loss(pixels, tokens, torch.Generator().manual_seed(0))
            params = [p for _, p in toy.parameters() if p.requires_grad]
            g = torch.autograd.grad(loss, params, allow_unused=True)
        grads[backend] = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten()
                                    for x, p in zip(g, params)])
        losses[backend] = float(loss)
    assert losses["math"] == pytest.approx(losses["default"], rel=1e-6)
    assert grads["math"].abs().max() > 0
    torch.testing.assert_close(grads["math"], grads["default"], rtol=1e-4, atol=1e-6)

    histories = {}
    for backend in toymod.ATTENTION_BACKENDS:
        torch.manual_seed(0)
        toy = build_toy_model(kind, copy.deepcopy(TINY[kind]))
        res = fit(toy, pixels, tokens,
                  dict(toy.cfg["train"], steps=4, batch_size=8, lr=0.003, warmup=0.0),
                  progress=False, attention=backend)
        histories[backend] = [v for _, v in res["loss_history"]]
    assert len(histories["math"]) == 4 and histories["math"][-1] < histories["math"][0]
    np.testing.assert_allclose(histories["math"], histories["default"], rtol=1e-4)
    with toymod.attention_backend("math"):  # only the math kernel is allowed on a CPU ...
        assert torch.backends.cuda.math_sdp_enabled()
        assert not torch.backends.cuda.flash_sdp_enabled()
    with toymod.attention_backend("math", "cuda"):  # ... torch chooses elsewhere
        assert torch.backends.cuda.flash_sdp_enabled()
    with pytest.raises(ValueError, match="attention must be one of"):
        toymod.attention_backend("flash")


@pytest.mark.parametrize("kind", list(TINY))
def test_every_family_overfits_a_tiny_batch(kind):
    losses = _overfit(kind)
    first, last = losses[0], losses[-1]
    assert last < 0.6 * first, f"{kind}: loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("kind", list(TINY))
def test_train_save_and_load_back_through_the_registry(kind, splits, tmp_path):
    from cliplens.models.registry import load_model

    root = tmp_path / "toy"
    meta = train_toy_model(kind, TINY[kind], splits["train"], splits["val"], root / kind,
                           progress=False)
    out = root / kind
    saved = json.loads((out / "cliplens_model.json").read_text())
    assert saved["name"] == kind and saved["family"] == TINY[kind]["family"]
    assert saved["library"] == TINY[kind]["library"] and saved["steps"] == 5
    assert set(saved["zeroshot"]) >= {"colour", "shape", "position", "size"}
    assert math.isfinite(saved["final_loss"]) and saved["train_seconds"] > 0
    assert saved["config"]["train"]["steps"] == 5 and meta["zeroshot"] == saved["zeroshot"]
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "temporary dir left behind"
    if saved["library"] == "open_clip":
        assert (out / "open_clip_config.json").is_file()
        assert (out / "open_clip_model.safetensors").is_file()
    else:
        assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
        assert (out / "preprocessor_config.json").is_file()
        if saved["family"] == "siglip2":
            assert (out / toymod.IMAGE_OBJECTIVE_FILE).is_file()

    # the loader gives the embeddings of the model as it was trained
    torch.manual_seed(TINY[kind]["train"]["seed"])
    ref = build_toy_model(kind, TINY[kind])
    pixels = ref.preprocess(splits["val"]["images"][:6])
    tokens = ref.tokenize(splits["val"]["captions_rich"][:6])
    loaded = load_model(f"toy:{kind}", toy_root=root)
    from PIL import Image

    lp = loaded.preprocess([Image.fromarray(im) for im in splits["val"]["images"][:6]])
    assert torch.allclose(lp, pixels, atol=1e-6), "loader preprocesses differently from training"
    # retrain deterministically in memory and compare with the loaded weights
    toy, _ = toymod.train_toy(kind, TINY[kind], splits["train"], None, progress=False)
    with torch.no_grad():
        a_img = toy.encode_image(pixels)
        a_txt = toy.encode_text(tokens)
        b_img = loaded.encode_image(lp)
        b_txt = loaded.encode_text(splits["val"]["captions_rich"][:6])
    assert torch.allclose(a_img, b_img, atol=1e-5)
    assert torch.allclose(a_txt, b_txt, atol=1e-5)


def test_training_is_deterministic(splits):
    a, _ = toymod.train_toy("siglip2", TINY["siglip2-masked"], splits["train"], None, progress=False)
    b, _ = toymod.train_toy("siglip2", TINY["siglip2-masked"], splits["train"], None, progress=False)
    for (ka, va), (kb, vb) in zip(a.parameters(), b.parameters()):
        assert ka == kb and torch.equal(va, vb), ka


# --- batching ----------------------------------------------------------------------------------


def _labels(n: int, seed: int = 0) -> dict:
    return {k: np.asarray(v) for k, v in toyworld.sample_labels(n, np.random.default_rng(seed)).items()}


def test_random_batching_is_the_default_and_unchanged():
    assert toy_model_config("x", TINY["clip-vit"])["train"]["batching"]["kind"] == "random"
    n, bs, steps = 50, 16, 9
    s = toymod.BatchSampler(n, bs, torch.Generator().manual_seed(3), {"kind": "random"})
    got = [s.next() for _ in range(steps)]
    # the loop fit() ran before batching existed
    gen = torch.Generator().manual_seed(3)
    order, pos, want = torch.randperm(n, generator=gen), 0, []
    for _ in range(steps):
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=gen), 0
        want.append(order[pos:pos + bs])
        pos += bs
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    s0 = toymod.BatchSampler(n, bs, torch.Generator().manual_seed(3), None)  # no batching key
    assert all(torch.equal(s0.next(), b) for b in want)


@pytest.mark.parametrize("share,fraction", [
    (["colour", "size", "background"], 1.0),
    (["colour", "size", "background"], 0.5),
    ([["colour", "size", "background", "position"], ["colour", "size", "background", "shape"]], 1.0),
])
def test_grouped_batches_are_deterministic_and_groups_share_the_factors(share, fraction):
    labels = _labels(2000)
    cfg = toy_model_config("x", dict(TINY["clip-vit"], train=dict(_TINY_TRAIN, batching={
        "kind": "grouped", "group_size": 4, "share": share, "grouped_fraction": fraction})))
    batching = cfg["train"]["batching"]
    alts = [share] if isinstance(share[0], str) else share

    def draw(seed):
        s = toymod.BatchSampler(2000, 32, torch.Generator().manual_seed(seed), batching, labels)
        return [s.next() for _ in range(6)]

    a, b, c = draw(0), draw(0), draw(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    n_groups = int(round(fraction * 32 / 4))
    for idx in a:
        assert len(idx) == 32 and len(set(idx.tolist())) == 32
        for j in range(n_groups):
            group = idx[4 * j:4 * j + 4].numpy()
            for f in alts[j % len(alts)]:
                assert len(set(labels[f][group].tolist())) == 1, (j, f)
        # different groups come from different buckets
        keys = [(j % len(alts),) + tuple(int(labels[f][idx[4 * j]]) for f in alts[j % len(alts)])
                for j in range(n_groups)]
        assert len(set(keys)) == len(keys)


def test_distinct_groups_hold_different_label_combinations():
    """share = every factor but shape, group_size 6, distinct: each group is the 6 shapes once
    (no false negative in a group); without distinct, random groups repeat shapes."""
    labels = _labels(4000)
    share = ["colour", "size", "background", "position"]
    batching = {"kind": "grouped", "share": share, "group_size": 6, "grouped_fraction": 1.0}
    s = toymod.BatchSampler(4000, 60, torch.Generator().manual_seed(0), dict(batching, distinct=True), labels)
    plain = toymod.BatchSampler(4000, 60, torch.Generator().manual_seed(0), batching, labels)
    repeats = 0
    for _ in range(5):
        idx, idx0 = s.next().numpy(), plain.next().numpy()
        assert len(set(idx.tolist())) == 60
        for j in range(10):
            group = idx[6 * j:6 * j + 6]
            assert sorted(labels["shape"][group].tolist()) == list(range(6)), group
            for f in share:
                assert len(set(labels[f][group].tolist())) == 1
            repeats += len(set(labels["shape"][idx0[6 * j:6 * j + 6]].tolist())) < 6
    assert repeats > 0  # the check above can fail: plain groups do repeat shapes
    # sharing all but size: groups of 2 (small, large), then random pairs; all five: refused
    both = toymod.BatchSampler(4000, 60, torch.Generator().manual_seed(1), dict(
        batching, distinct=True, share=[share, ["colour", "shape", "background", "position"]]),
        labels).next().numpy()
    assert sorted(labels["shape"][both[:6]].tolist()) == list(range(6))
    assert sorted(labels["size"][both[6:8]].tolist()) == [0, 1]
    assert len(set(labels["shape"][both[6:8]].tolist())) == 1
    assert sorted(labels["shape"][both[8:14]].tolist()) == list(range(6))
    with pytest.raises(ValueError, match="distinct"):
        toymod.BatchSampler(4000, 60, torch.Generator(), dict(
            batching, distinct=True, share=share + ["shape"]), labels)


def test_partial_captions_need_rich_captions():
    cfg = dict(TINY["clip-vit"], captions="poor",
               train=dict(_TINY_TRAIN, partial_captions={"fraction": 0.5}))
    with pytest.raises(ToyConfigError, match=r"x\.train\.partial_captions\.fraction.*'poor'"):
        toy_model_config("x", cfg)
    assert toy_model_config("x", dict(cfg, captions="rich"))["train"]["partial_captions"] == {
        "fraction": 0.5, "variants": 2, "max_factors": 4, "where": "all"}


def test_partial_caption_set_tokenises_the_drawn_captions(splits):
    cfg = toy_model_config("p", dict(TINY["clip-vit"], train=dict(
        _TINY_TRAIN, partial_captions={"fraction": 0.25, "variants": 3, "max_factors": 2})))
    toy = build_toy_model("p", cfg)
    labels = splits["train"]["labels"]
    assert toymod.partial_caption_set(toy, labels, dict(cfg["train"], partial_captions={})) is None
    with pytest.raises(ValueError, match="needs the training labels"):
        toymod.partial_caption_set(toy, None, cfg["train"])
    part = toymod.partial_caption_set(toy, labels, cfg["train"])
    n = len(labels["shape"])
    assert part["tokens"].shape[:2] == (3, n) and part["named"].shape == (3, n, 5)
    assert part["fraction"] == 0.25 and set(part["named"].sum(-1).unique().tolist()) == {1, 2}
    rng = np.random.default_rng(cfg["train"]["seed"])  # the same draws, in the same order
    for v in range(3):
        texts, named = toyworld.partial_captions(labels, rng, 2)
        assert torch.equal(part["tokens"][v], toy.tokenize(texts))
        assert torch.equal(part["named"][v], torch.from_numpy(named))
    assert torch.equal(part["labels"][:, list(toyworld.FACTORS).index("colour")],
                       torch.as_tensor(np.asarray(labels["colour"])))


def test_partial_captions_train_deterministically_and_change_the_model(splits):
    part = dict(_TINY_TRAIN, partial_captions={"fraction": 0.5})
    a, _ = toymod.train_toy("p", dict(TINY["clip-vit"], train=part), splits["train"], None, progress=False)
    b, _ = toymod.train_toy("p", dict(TINY["clip-vit"], train=part), splits["train"], None, progress=False)
    c, _ = toymod.train_toy("p", TINY["clip-vit"], splits["train"], None, progress=False)
    for (ka, va), (_, vb), (_, vc) in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(va, vb), ka
    assert not all(torch.equal(va, vc) for (_, va), (_, vc) in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize("where", ["all", "random"])
def test_partial_captions_replace_the_chosen_pairs_captions(splits, where, monkeypatch):
    cfg = toy_model_config("p", dict(TINY["clip-vit"], train=dict(
        _TINY_TRAIN, steps=3, partial_captions={"fraction": 1.0, "where": where},
        batching={"kind": "grouped", "group_size": 4, "grouped_fraction": 0.5})))
    toy = build_toy_model("p", cfg)
    train = splits["train"]
    rich = toy.tokenize(train["captions_rich"])
    seen = []
    real_loss = toy.loss
    monkeypatch.setattr(toy, "loss", lambda p, t, g=None, match=None: (
        seen.append((t.clone(), match.clone())), real_loss(p, t, g, match))[1])
    fit(toy, toy.preprocess(train["images"]), rich, cfg["train"], progress=False,
        labels=train["labels"], partial=toymod.partial_caption_set(toy, train["labels"], cfg["train"]))
    known = {tuple(r.tolist()) for r in rich}
    for tok, match in seen:
        is_rich = [tuple(r.tolist()) in known for r in tok]
        if where == "all":  # every caption partial (they name at most 4 of the 5 factors)
            assert not any(is_rich)
        else:  # the groups (first 16 pairs) keep theirs, the random pairs get partial ones
            assert all(is_rich[:16]) and not any(is_rich[16:])
        assert match.diagonal().all() and match.sum() > len(match)  # partial captions match more


def test_grouped_batching_trains_through_train_toy(splits):
    cfg = dict(TINY["clip-vit"], train=dict(_TINY_TRAIN, batching={"kind": "grouped", "group_size": 4}))
    a, _ = toymod.train_toy("g", cfg, splits["train"], None, progress=False)
    b, _ = toymod.train_toy("g", cfg, splits["train"], None, progress=False)
    for (ka, va), (kb, vb) in zip(a.parameters(), b.parameters()):
        assert ka == kb and torch.equal(va, vb), ka
    with pytest.raises(ValueError, match="labels"):
        fit(a, torch.zeros(8, 3, 16, 16), a.tokenize(["a"] * 8), toy_model_config("g", cfg)["train"],
            progress=False)


# --- the image-side objective --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["siglip2", "siglip2-masked"])
def test_image_objective_gradient_reaches_patch_tokens_and_vision_tower_only(kind):
    torch.manual_seed(0)
    toy = build_toy_model(kind, TINY[kind])
    toy.train()
    pixels = torch.randn(4, 3, 16, 16)
    vm = toy.model.vision_model
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["tokens"] = output

    handle = vm.post_layernorm.register_forward_hook(keep)
    vout = vm(pixel_values=pixels)
    tokens = vout.last_hidden_state if kind == "siglip2" else None
    loss = toy.image_objective(vm, pixels, tokens, torch.Generator().manual_seed(0))
    loss.backward()
    handle.remove()
    g = captured["tokens"].grad
    assert g is not None and g.shape == (4, 4, 32)
    per_patch = g.abs().sum(-1)
    if kind == "siglip2":
        assert (per_patch > 0).all(), "every patch token gets gradient"
    else:
        mask_counts = (per_patch > 0).sum(1)
        assert (mask_counts == 2).all(), "only the masked patches get gradient (ratio 0.5 of 4)"
    for name, p in vm.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert vm.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in toy.model.text_model.parameters())
    # the attention-pooling head is not trained by the image objective
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in vm.head.parameters())


def test_pixel_objective_is_the_patch_mse():
    obj = PatchPixelObjective(hidden_size=12, patch_size=2, kind="pixel")
    with torch.no_grad():
        obj.head.weight.copy_(torch.eye(12))
        obj.head.bias.zero_()
    pixels = torch.randn(3, 3, 4, 4)
    target = patchify(pixels, 2)
    tokens = target + 0.5
    assert obj.reconstruction_loss(tokens, pixels).item() == pytest.approx(0.25, rel=1e-6)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[:, 0] = True
    tokens2 = target.clone()
    tokens2[:, 1:] += 1.0  # errors only where unmasked
    assert obj.reconstruction_loss(tokens2, pixels, mask).item() == pytest.approx(0.0, abs=1e-12)
