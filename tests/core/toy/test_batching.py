"""Which pairs meet in a batch: random batching is unchanged, grouped batches share the chosen
factors (deterministically), distinct groups hold different label combinations, and partial
captions are drawn and tokenised as configured."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cliplens.core.settings import Batching
from cliplens.core.toy import world
from cliplens.core.toy.batching import BatchSampler, partial_caption_set
from cliplens.core.toy.models import ToyConfigError, build_toy_model, toy_model_config

from .tiny import TINY, TINY_TRAIN, toy_splits



@pytest.fixture(scope="module")
def splits(toy_cfg):
    return toy_splits(toy_cfg)


def _labels(n: int, seed: int = 0) -> dict:
    return {k: np.asarray(v) for k, v in world.sample_labels(n, np.random.default_rng(seed)).items()}


def test_random_batching_is_the_default_and_unchanged():
    assert toy_model_config("x", TINY["clip-vit"]).train.batching.kind == "random"
    n, bs, steps = 50, 16, 9
    s = BatchSampler(n, bs, torch.Generator().manual_seed(3), Batching.from_dict({"kind": "random"}))
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
    s0 = BatchSampler(n, bs, torch.Generator().manual_seed(3), None)  # no batching settings
    assert all(torch.equal(s0.next(), b) for b in want)


@pytest.mark.parametrize("share,fraction", [
    (["colour", "size", "background"], 1.0),
    (["colour", "size", "background"], 0.5),
    ([["colour", "size", "background", "position"], ["colour", "size", "background", "shape"]], 1.0),
])
def test_grouped_batches_are_deterministic_and_groups_share_the_factors(share, fraction):
    labels = _labels(2000)
    cfg = toy_model_config("x", dict(TINY["clip-vit"], train=dict(TINY_TRAIN, batching={
        "kind": "grouped", "group_size": 4, "share": share, "grouped_fraction": fraction})))
    batching = cfg.train.batching
    alts = [share] if isinstance(share[0], str) else share

    def draw(seed):
        s = BatchSampler(2000, 32, torch.Generator().manual_seed(seed), batching, labels)
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
    batching = Batching.from_dict({"kind": "grouped", "share": share, "group_size": 6,
                                   "grouped_fraction": 1.0})
    s = BatchSampler(4000, 60, torch.Generator().manual_seed(0), batching.replace(distinct=True), labels)
    plain = BatchSampler(4000, 60, torch.Generator().manual_seed(0), batching, labels)
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
    both = BatchSampler(4000, 60, torch.Generator().manual_seed(1), batching.replace(
        distinct=True, share=[share, ["colour", "shape", "background", "position"]]),
        labels).next().numpy()
    assert sorted(labels["shape"][both[:6]].tolist()) == list(range(6))
    assert sorted(labels["size"][both[6:8]].tolist()) == [0, 1]
    assert len(set(labels["shape"][both[6:8]].tolist())) == 1
    assert sorted(labels["shape"][both[8:14]].tolist()) == list(range(6))
    with pytest.raises(ValueError, match="distinct"):
        BatchSampler(4000, 60, torch.Generator(), batching.replace(
            distinct=True, share=share + ["shape"]), labels)


# --- partial captions --------------------------------------------------------------------------


def test_partial_captions_need_rich_captions():
    cfg = dict(TINY["clip-vit"], captions="poor",
               train=dict(TINY_TRAIN, partial_captions={"fraction": 0.5}))
    with pytest.raises(ToyConfigError, match=r"x\.train\.partial_captions\.fraction.*'poor'"):
        toy_model_config("x", cfg)
    assert toy_model_config("x", dict(cfg, captions="rich")).train.partial_captions.to_dict() == {
        "fraction": 0.5, "variants": 2, "max_factors": 4, "where": "all"}


def test_partial_caption_set_tokenises_the_drawn_captions(splits):
    cfg = toy_model_config("p", dict(TINY["clip-vit"], train=dict(
        TINY_TRAIN, partial_captions={"fraction": 0.25, "variants": 3, "max_factors": 2})))
    toy = build_toy_model("p", cfg)
    labels = splits["train"]["labels"]
    assert partial_caption_set(toy, labels, cfg.train.replace(partial_captions={})) is None
    with pytest.raises(ValueError, match="needs the training labels"):
        partial_caption_set(toy, None, cfg.train)
    part = partial_caption_set(toy, labels, cfg.train)
    n = len(labels["shape"])
    assert part["tokens"].shape[:2] == (3, n) and part["named"].shape == (3, n, 5)
    assert part["fraction"] == 0.25 and set(part["named"].sum(-1).unique().tolist()) == {1, 2}
    rng = np.random.default_rng(cfg.train.seed)  # the same draws, in the same order
    for v in range(3):
        texts, named = world.partial_captions(labels, rng, 2)
        assert torch.equal(part["tokens"][v], toy.tokenize(texts))
        assert torch.equal(part["named"][v], torch.from_numpy(named))
    assert torch.equal(part["labels"][:, list(world.FACTORS).index("colour")],
                       torch.as_tensor(np.asarray(labels["colour"])))
