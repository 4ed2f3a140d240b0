"""Training study 000's reconstructor: overfitting, exact resumption after a kill, the
step-indexed batch plan and the online (encode-as-you-go) source."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cliplens.core.train import load_checkpoint, lr_factor
from cliplens.studies.inversion.reconstructor import CHECKPOINT_FILE, Reconstructor
from cliplens.studies.inversion.training import (
    BatchPlan,
    PairSource,
    target_transform,
    train_reconstructor,
)

from .tiny import TINY, make_net, make_source, train_settings



def test_reconstructor_overfits_a_handful_of_images():
    source, imgs = make_source()
    net = make_net()
    with torch.no_grad():
        first = float(F.mse_loss(net(torch.from_numpy(source._tokens)), imgs))
    rec = train_reconstructor(net, source, train_settings(steps=150, batch_size=4, lr=3e-3,
                                                          warmup=0.05), progress=False)
    with torch.no_grad():
        last = float(F.mse_loss(net(torch.from_numpy(source._tokens)), imgs))
    assert last < first / 10, (first, last, rec["history"][-3:])


class Killed(Exception):
    pass


def test_killed_training_resumes_to_the_uninterrupted_weights(tmp_path):
    train = train_settings(steps=12, batch_size=3, lr=3e-3, warmup=0.2, weight_decay=0.01,
                           grad_clip=1.0, seed=5, sample_every=4, checkpoint_every=4)
    source, imgs = make_source(n=7)
    sample = (torch.from_numpy(source._tokens[:2]), imgs[:2])

    ref = make_net(seed=1)
    rec_ref = train_reconstructor(ref, source, train, checkpoint_dir=tmp_path / "a",
                                  sample=sample, progress=False)

    def kill(step):
        if step == 6:
            raise Killed

    killed = make_net(seed=1)
    with pytest.raises(Killed):
        train_reconstructor(killed, source, train, checkpoint_dir=tmp_path / "b", sample=sample,
                            progress=False, on_step=kill)
    ckpt = load_checkpoint(tmp_path / "b" / CHECKPOINT_FILE)  # weights_only=True
    assert ckpt["step"] == 4
    resumed = make_net(seed=1)  # a fresh process: fresh weights, resumed from the checkpoint
    rec = train_reconstructor(resumed, source, train, checkpoint_dir=tmp_path / "b",
                              sample=sample, progress=False)
    assert rec["resumed_from"] == 4
    a, b = ref.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rec["history"] == rec_ref["history"] and rec["val_history"] == rec_ref["val_history"]
    assert (tmp_path / "b" / "samples" / "step_000012.png").exists()
    # a finished run resumes at its end; another configuration ignores the checkpoint
    again = make_net(seed=1)
    assert train_reconstructor(again, source, train, checkpoint_dir=tmp_path / "b",
                               progress=False)["resumed_from"] == 12
    other = train_reconstructor(make_net(seed=1), source, train.replace(lr=1e-3),
                                checkpoint_dir=tmp_path / "b", progress=False)
    assert other["resumed_from"] is None


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


def test_online_source_encodes_the_pixels_it_serves(tmp_path):
    from tests.tiny_models import ArrayDataset, tiny_siglip

    model = tiny_siglip()
    ds = ArrayDataset(np.random.default_rng(0).integers(0, 256, (10, 40, 40, 3), dtype=np.uint8))
    targets = target_transform(model)

    def encode(px):
        return model.tower.hidden_tokens(px, -2)

    src = PairSource(None, ds, targets, encode=encode)
    px, tgt = src[[3, 1]]
    assert torch.equal(px, model.preprocess(ds.images(3, 4) + ds.images(1, 2)))
    assert torch.allclose(tgt, px, atol=1e-6)  # SigLIP: mean = std = 0.5, so the target is the input
    with torch.no_grad():
        assert torch.allclose(src.tokens([3, 1]), encode(px), atol=1e-6)
    net = Reconstructor(32, (4, 4), 32, **TINY)
    rec = train_reconstructor(net, src, train_settings(steps=3, batch_size=4, lr=1e-3),
                              progress=False, checkpoint_dir=tmp_path)
    assert rec["steps"] == 3 and np.isfinite(rec["final_loss"])
    assert not torch.equal(net.token_whiten, torch.eye(32))  # whitening fitted on encoded tokens
