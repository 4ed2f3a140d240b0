"""Which pairs a toy model trains on together: batches (:class:`BatchSampler`) and the partial
captions swapped into them (:func:`partial_caption_set`)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ..settings import Batching, ToyTrain
from . import world

BATCHING_FACTORS = ("colour", "shape", "position", "size", "background")


class BatchSampler:
    """Index batches for :func:`fit`, drawn from ``gen`` (deterministic given the seed).

    ``batching`` is ``train.batching``: ``kind: random`` (the default) visits a fresh
    permutation per epoch and drops the last incomplete batch, exactly as before this option
    existed.  ``kind: grouped`` builds ``round(grouped_fraction * batch_size / group_size)``
    groups of ``group_size`` images that share the label factors in ``share`` (hard
    negatives: the contrastive loss can only separate them by the other factors); the rest of
    the batch is filled from the epoch permutation, without repeating an image.  ``share`` is
    a list of factors, or a list of such lists used in turn group by group.  Each group comes
    from a different bucket (combination of the shared factors) where there are enough; a
    bucket picks proportionally to its size, its members uniformly without replacement.  With
    ``distinct: true`` no two members of a group have the same labels on every factor (e.g.
    sharing everything but shape, a group of up to 6 holds 6 different shapes): a group then
    takes one member from each of ``g`` different label combinations of its bucket, so the
    captions inside a group always describe different images and no in-group negative is a
    false one; ``g`` is ``group_size`` or, if fewer, the most combinations any bucket of that
    alternative has (2 when only size may differ), and the rest of the batch is random pairs.
    The labels only choose which pairs meet in a batch; the loss never sees them.
    """

    def __init__(self, n: int, batch_size: int, gen: torch.Generator,
                 batching: Batching | None = None,
                 labels: Mapping[str, Any] | None = None):
        self.n, self.bs, self.gen = n, min(int(batch_size), n), gen
        self.kind = "random" if batching is None else batching.kind
        self.order, self.pos = torch.randperm(n, generator=gen), 0
        self.grouped = 0  # the last batch's first `grouped` pairs are its groups, the rest random
        if self.kind == "random":
            return
        if self.kind != "grouped":
            raise ValueError(f"train.batching.kind: unknown {self.kind!r} (random, grouped)")
        alts = batching.alternatives  # [[]] when nothing is shared: groups of random pairs
        if labels is None:
            raise ValueError("train.batching.kind grouped needs the training labels (fit(labels=...))")
        self.g = max(1, min(int(batching.group_size), self.bs))
        frac = float(batching.grouped_fraction)
        self.n_groups = int(round(frac * self.bs / self.g))
        if frac > 0:
            self.n_groups = max(1, self.n_groups)
        self.n_groups = min(self.n_groups, self.bs // self.g)
        self.distinct = bool(batching.distinct)
        full = None
        if self.distinct:  # one id per combination of every label factor there is
            have = [f for f in BATCHING_FACTORS if f in labels]
            _, full = np.unique(np.stack([np.asarray(labels[f], dtype=np.int64) for f in have], 1),
                                axis=0, return_inverse=True)
            full = full.reshape(-1)
        self.alts = []  # per alternative: (bucket members list, bucket weights, group size)
        for factors in alts:
            missing = [f for f in factors if f not in labels]
            if missing:
                raise ValueError(f"train.batching.share: no labels {missing}; "
                                 f"have {sorted(labels)}")
            cols = np.stack([np.asarray(labels[f], dtype=np.int64) for f in factors], 1) \
                if factors else np.zeros((n, 1), np.int64)
            if len(cols) != n:
                raise ValueError(f"labels have {len(cols)} rows for {n} pairs")
            _, inv = np.unique(cols, axis=0, return_inverse=True)
            inv = inv.reshape(-1)
            members = [torch.from_numpy(np.flatnonzero(inv == k)) for k in range(int(inv.max()) + 1)]
            weights = torch.tensor([float(len(m)) for m in members], dtype=torch.float64)
            g = self.g
            if self.distinct:  # a bucket's members split by full label combination
                members = [[m[torch.from_numpy(full[m.numpy()] == c)] for c in np.unique(full[m.numpy()])]
                           for m in members]
                g = min(g, max(len(m) for m in members))  # e.g. 2 when only size may differ
                if g < 2:
                    raise ValueError(f"train.batching.distinct: sharing {factors}, every pair of "
                                     "a group would have the same labels; share fewer factors")
                # a full group needs g combinations; weight stays the bucket's size
                weights = weights * torch.tensor([float(len(m) >= g) for m in members],
                                                 dtype=torch.float64)
            self.alts.append((members, weights, g))

    def _random(self, k: int, exclude: set[int]) -> list[torch.Tensor]:
        out, need = [], k
        while need > 0:
            if self.pos >= self.n:
                self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
            chunk = self.order[self.pos:self.pos + need]
            self.pos += len(chunk)
            if exclude:
                chunk = chunk[[int(i) not in exclude for i in chunk]]
            out.append(chunk)
            need -= len(chunk)
        return out

    def _draw(self, members) -> torch.Tensor:
        """A bucket's members in random order; ``distinct``: one random member of each of its
        label combinations, the combinations in random order."""
        if not self.distinct:
            return members[torch.randperm(len(members), generator=self.gen)]
        picks = [m[torch.randint(len(m), (1,), generator=self.gen)] for m in members]
        return torch.cat(picks)[torch.randperm(len(picks), generator=self.gen)]

    def next(self) -> torch.Tensor:
        if self.kind == "random":
            if self.pos + self.bs > self.n:
                self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
            idx = self.order[self.pos:self.pos + self.bs]
            self.pos += self.bs
            return idx
        chosen: list[list[torch.Tensor]] = []  # per alternative, its groups
        for a, (members, weights, g) in enumerate(self.alts):
            count = len(range(a, self.n_groups, len(self.alts)))
            eligible = weights * (weights >= g)
            if count == 0:
                buckets = []
            elif count <= int((eligible > 0).sum()):  # distinct buckets, each with a full group
                buckets = torch.multinomial(eligible, count, replacement=False,
                                            generator=self.gen).tolist()
            else:
                buckets = torch.multinomial(weights, count, replacement=True,
                                            generator=self.gen).tolist()
            chosen.append([self._draw(members[bk]) for bk in buckets])
        parts, used = [], set()
        for j in range(self.n_groups):  # alternatives in turn; no image twice in a batch
            cand = chosen[j % len(self.alts)][j // len(self.alts)]
            if used:
                cand = cand[[int(i) not in used for i in cand]]
            parts.append(cand[:self.alts[j % len(self.alts)][2]])
            used.update(parts[-1].tolist())
        idx = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
        self.grouped = len(idx)
        rest = self.bs - len(idx)
        if rest > 0:
            idx = torch.cat([idx] + self._random(rest, set(idx.tolist())))
        return idx


def partial_caption_set(toy, labels: Mapping[str, Any] | None,
                        train_cfg: ToyTrain) -> dict[str, Any] | None:
    """The partial captions :func:`fit` swaps in (``train.partial_captions``; None when its
    ``fraction`` is 0): ``variants`` draws of :func:`cliplens.core.toy.world.partial_captions` per
    image from a numpy generator seeded with ``train.seed``, tokenised (each distinct text
    once).  Returns ``{"tokens" [V, N, L], "named" bool [V, N, F], "labels" int [N, F],
    "fraction", "where"}``, factors in :data:`cliplens.core.toy.world.FACTORS` order."""
    opts = train_cfg.partial_captions
    if float(opts.fraction) <= 0:
        return None
    if labels is None:
        raise ValueError("train.partial_captions needs the training labels (the factors each "
                         "partial caption names)")
    rng = np.random.default_rng(int(train_cfg.seed))
    texts, named = [], []
    for _ in range(int(opts.variants)):
        t, m = world.partial_captions(labels, rng, int(opts.max_factors))
        texts += t
        named.append(m)
    distinct, inverse = np.unique(texts, return_inverse=True)
    tokens = toy.tokenize(list(distinct))[torch.from_numpy(inverse.reshape(-1))]
    lab = np.stack([np.asarray(labels[f], dtype=np.int64) for f in world.FACTORS], 1)
    v, n = len(named), len(lab)
    return {"tokens": tokens.reshape(v, n, -1), "named": torch.from_numpy(np.stack(named)),
            "labels": torch.from_numpy(lab), "fraction": float(opts.fraction),
            "where": str(opts.where)}
