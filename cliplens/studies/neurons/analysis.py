"""What study 003's units do to the embedding and what they respond to, as pure functions:
replacement and mean-ablation, activations along the first component, the norms of CLIP
ResNet neurons (all their pairs), and the units whose texts name a concept.

Each image embedding splits into its units' terms and the rest, ``e_i = sum_u r_iu + rest_i``
(pairs: ``r_iu = s_iu u_u``, rest = the pool's bias; ViT neurons, exact variant: rest = every
path not through the block's neurons).  A unit's term is then

* kept:      ``r_iu``;
* ablated:   ``mean_u`` (mean ablation);
* replaced:  ``mean_u + <r_iu - mean_u, d_u> d_u`` with d_u a unit direction: its first
  component (exact for pairs, which are rank one) or its sparse-text direction.

:func:`unit_mask` picks the units kept in the published ablation (mean top-k norm at or above
a percentile).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .components import Blocks

KEEP, ABLATE, REPLACE = 0, 1, 2


def unit_mask(top_norms: np.ndarray, percentile: float) -> np.ndarray:
    """Units kept [U] (bool): mean of each unit's top-k norms [U, k] at or above the
    ``percentile``-th percentile of those means (90 keeps the top 10 %, as published)."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    strength = np.asarray(top_norms, dtype=np.float64).mean(1)
    return strength >= np.percentile(strength, percentile)


def _unit_dirs(directions: np.ndarray) -> np.ndarray:
    d = np.asarray(directions, dtype=np.float64)
    n = np.linalg.norm(d, axis=1, keepdims=True)
    return np.divide(d, n, out=np.zeros_like(d), where=n > 0)


#: one way of changing every unit: (modes [U] of KEEP / ABLATE / REPLACE, directions [U, D]
#: or None where no unit is REPLACE)
Change = tuple[np.ndarray, "np.ndarray | None"]


def _prepared(changes: Sequence[Change], n_units: int) -> list[tuple]:
    out = []
    for modes, directions in changes:
        modes = np.asarray(modes)
        if modes.shape != (n_units,):
            raise ValueError(f"modes must give each of the {n_units} units one mode")
        repl = modes == REPLACE
        if repl.any() and directions is None:
            raise ValueError("replacing units needs their directions")
        d = _unit_dirs(directions)[repl] if repl.any() else None
        out.append((modes == KEEP, modes != KEEP, repl, d))
    return out


def changed_units(blocks: Blocks, mean: np.ndarray, changes: Sequence[Change]
                  ) -> list[np.ndarray]:
    """For each change, ``sum_u term_iu`` [N, D] with each unit's term as its mode says (KEEP,
    ABLATE, REPLACE; module docstring), all from one pass over blocks of unit vectors
    [b, U, D] (a store or the streaming path)."""
    mean = np.asarray(mean, dtype=np.float64)
    prep = _prepared(changes, mean.shape[0])
    consts = [mean[other].sum(0) for _, other, _, _ in prep]
    parts: list[list[np.ndarray]] = [[] for _ in prep]
    for _, x in blocks():
        x = np.asarray(x, dtype=np.float64)
        for out, const, (keep, _, repl, d) in zip(parts, consts, prep):
            part = x[:, keep].sum(1) + const
            if d is not None:
                part = part + np.einsum("bud,ud->bu", x[:, repl] - mean[repl], d) @ d
            out.append(part)
    return [np.concatenate(p) for p in parts]


def changed_pairs(scalar_blocks: Blocks, u: np.ndarray, s_mean: np.ndarray,
                  changes: Sequence[Change]) -> list[np.ndarray]:
    """:func:`changed_units` for neuron-head pairs from their scalars, without the [N, U, D]
    vectors: ``r_iu = s_iu u_u``, ``mean_u = mean(s_u) u_u``; so a replaced pair contributes
    ``mean(s_u) u_u + (s_iu - mean(s_u)) <u_u, d_u> d_u`` (its own term when d_u = +-u/|u|).
    ``scalar_blocks`` yields [b, H, C]; ``u`` [H, C, D]; ``s_mean`` [H * C].  One pass for all
    changes."""
    u = np.asarray(u, dtype=np.float64)
    h, c, dim = u.shape
    uf = u.reshape(h * c, dim)
    s_mean = np.asarray(s_mean, dtype=np.float64)
    prep = _prepared(changes, h * c)
    consts = [s_mean[other] @ uf[other] for _, other, _, _ in prep]
    gains = [None if d is None else np.einsum("ud,ud->u", uf[repl], d)[:, None] * d
             for _, _, repl, d in prep]                                 # <u, d> d  [R, D]
    parts: list[list[np.ndarray]] = [[] for _ in prep]
    for _, s in scalar_blocks():
        s = np.asarray(s, dtype=np.float64).reshape(s.shape[0], h * c)
        for out, const, gain, (keep, _, repl, _) in zip(parts, consts, gains, prep):
            part = s[:, keep] @ uf[keep] + const
            if gain is not None:
                part = part + (s[:, repl] - s_mean[repl]) @ gain
            out.append(part)
    return [np.concatenate(p) for p in parts]


def unit_projections(blocks: Blocks, mean: np.ndarray, directions: np.ndarray,
                     units: Sequence[int]) -> np.ndarray:
    """Activations A [N, len(units)]: ``A[i, j] = <r_{i,u} - mean_u, d_u>`` for u = units[j],
    d_u the unit-normalised ``directions[u]`` (a first component: the scalar the component
    describes), from one pass over blocks of unit vectors [b, U, D]."""
    units = np.asarray(units, dtype=np.int64)
    mean = np.asarray(mean, dtype=np.float64)[units]
    d = _unit_dirs(np.asarray(directions)[units])
    out = [np.einsum("bud,ud->bu", np.asarray(x, dtype=np.float64)[:, units] - mean, d)
           for _, x in blocks()]
    return np.concatenate(out) if out else np.zeros((0, len(units)))


def pair_projections(scalar_blocks: Blocks, u: np.ndarray, s_mean: np.ndarray,
                     directions: np.ndarray, units: Sequence[int]) -> np.ndarray:
    """:func:`unit_projections` for pairs from their scalars [b, H, C]:
    ``A[i, j] = (s_{i,u} - mean(s_u)) <u_u, d_u>``."""
    units = np.asarray(units, dtype=np.int64)
    uf = np.asarray(u, dtype=np.float64).reshape(-1, np.shape(u)[-1])[units]
    gain = np.einsum("ud,ud->u", uf, _unit_dirs(np.asarray(directions)[units]))
    m = np.asarray(s_mean, dtype=np.float64)[units]
    out = [(np.asarray(s, dtype=np.float64).reshape(len(s), -1)[:, units] - m) * gain
           for _, s in scalar_blocks()]
    return np.concatenate(out) if out else np.zeros((0, len(units)))


def channel_norms(scalar_blocks: Blocks, u: np.ndarray, s_mean: np.ndarray,
                  channels: Sequence[int]) -> np.ndarray:
    """Centred norms [N, len(channels)] of CLIP ResNet neurons, each the sum of its pairs over
    the heads: ``|| sum_h (s_{i,h,c} - mean s_{h,c}) u_{h,c} ||``, computed with the heads'
    Gram matrix ``<u_{h,c}, u_{h',c}>`` [H, H] per channel (no [N, D] vectors)."""
    u = np.asarray(u, dtype=np.float64)
    h, c, _ = u.shape
    ch = np.asarray(channels, dtype=np.int64)
    gram = np.einsum("hcd,gcd->chg", u[:, ch], u[:, ch])                   # [n, H, H]
    m = np.asarray(s_mean, dtype=np.float64).reshape(h, c)[:, ch].T        # [n, H]
    out = []
    for _, s in scalar_blocks():
        x = np.asarray(s, dtype=np.float64)[:, :, ch].transpose(0, 2, 1) - m   # [b, n, H]
        out.append(np.sqrt(np.maximum(np.einsum("bnh,nhg,bng->bn", x, gram, x), 0.0)))
    return np.concatenate(out) if out else np.zeros((0, len(ch)))


def naming_units(decompositions: Sequence[Mapping[str, Sequence]], words: Sequence[str],
                 top: int) -> list[tuple[int, float]]:
    """Units whose first ``top`` sparse texts (by |weight|) name one of ``words`` (whole words,
    any case), with the sign of the first such text's weight: [(unit index, +1 or -1)].
    ``decompositions[u]``: ``{"texts": [...], "weights": [...]}`` as :func:`~.jobs.run_sparse`
    writes them."""
    import re

    pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(w.lower()) for w in words)
                         + r")(?![\w-])")
    out = []
    for i, dec in enumerate(decompositions):
        order = np.argsort(-np.abs(np.asarray(dec["weights"], dtype=np.float64)),
                           kind="stable")[:top]
        for j in order:
            if pattern.search(dec["texts"][j].lower()):
                out.append((i, 1.0 if dec["weights"][j] >= 0 else -1.0))
                break
    return out
