"""What study 003's units do to the embedding: replacement and mean-ablation (issue 16's first
two analyses, as pure functions; their rules, tables and figures are not built yet).

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


def changed_units(blocks: Blocks, mean: np.ndarray, modes: np.ndarray,
                  directions: np.ndarray | None = None) -> np.ndarray:
    """``sum_u term_iu`` [N, D] with each unit's term as ``modes[u]`` says (KEEP, ABLATE,
    REPLACE; module docstring), from blocks of unit vectors [b, U, D] (a store or the streaming
    path).  ``directions`` [U, D] (normalised here) are needed where any unit is REPLACE."""
    modes = np.asarray(modes)
    mean = np.asarray(mean, dtype=np.float64)
    if (modes == REPLACE).any() and directions is None:
        raise ValueError("replacing units needs their directions")
    d = None if directions is None else _unit_dirs(directions)
    keep, ablate, repl = modes == KEEP, modes == ABLATE, modes == REPLACE
    const = mean[ablate].sum(0) + mean[repl].sum(0)
    out = []
    for _, x in blocks():
        x = np.asarray(x, dtype=np.float64)
        part = x[:, keep].sum(1) + const
        if repl.any():
            coef = np.einsum("bud,ud->bu", x[:, repl] - mean[repl], d[repl])
            part = part + coef @ d[repl]
        out.append(part)
    return np.concatenate(out)


def changed_pairs(scalar_blocks: Blocks, u: np.ndarray, s_mean: np.ndarray, modes: np.ndarray,
                  directions: np.ndarray | None = None) -> np.ndarray:
    """:func:`changed_units` for neuron-head pairs from their scalars, without the [N, U, D]
    vectors: ``r_iu = s_iu u_u``, ``mean_u = mean(s_u) u_u``; so a replaced pair contributes
    ``mean(s_u) u_u + (s_iu - mean(s_u)) <u_u, d_u> d_u`` (its own term when d_u = +-u/|u|).
    ``scalar_blocks`` yields [b, H, C]; ``u`` [H, C, D]; ``s_mean`` [H * C]."""
    u = np.asarray(u, dtype=np.float64)
    h, c, dim = u.shape
    uf = u.reshape(h * c, dim)
    modes = np.asarray(modes)
    s_mean = np.asarray(s_mean, dtype=np.float64)
    if (modes == REPLACE).any() and directions is None:
        raise ValueError("replacing pairs needs their directions")
    keep, other, repl = modes == KEEP, modes != KEEP, modes == REPLACE
    const = s_mean[other] @ uf[other]
    if repl.any():
        d = _unit_dirs(directions)[repl]
        gain = (np.einsum("ud,ud->u", uf[repl], d))[:, None] * d      # <u, d> d  [R, D]
    out = []
    for _, s in scalar_blocks():
        s = np.asarray(s, dtype=np.float64).reshape(s.shape[0], h * c)
        part = s[:, keep] @ uf[keep] + const
        if repl.any():
            part = part + (s[:, repl] - s_mean[repl]) @ gain
        out.append(part)
    return np.concatenate(out)
