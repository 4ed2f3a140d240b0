"""Where in the image a neuron-head pair acts: its spatial map, and zero-shot segmentation from
the pairs whose component matches a class text (issue 16, deliverable 4).

A pair's scalar is a sum over the pool's tokens, ``s_{h,c} = sum_p a_h(p) t_c(p)``
(:mod:`.pairs`; p = 0 the mean token, 1..P the feature map's positions).  The mean token is
itself the mean of the positions (plus its positional embedding), so its share is spread
evenly over them, and the pair's map over the P positions is

    m_{h,c}(p) = a_h(p) t_c(p) + a_h(0) t_c(0) / P,     sum_p m_{h,c}(p) = s_{h,c}  (exactly).

A class k with text direction e_k [D] (its classifier column minus the mean column,
:func:`~cliplens.core.text.zeroshot.class_direction`) gets the map of the pairs chosen for it,
each weighted by how much it writes along e_k:

    M_k(p) = sum_{(h,c) in P_k} m_{h,c}(p) <u_{h,c}, e_k>,

so that with every pair chosen, ``sum_p M_k(p) = <embedding - bias, e_k>``: the class logit
(less the pool's bias) split over positions.  P_k are the pairs whose component (the unit
direction ``sign(mean s) u / |u|``, :func:`matched_gains`) has the largest cosine with e_k.
"""

from __future__ import annotations

import numpy as np
import torch


def matched_gains(u: np.ndarray, s_mean: np.ndarray, class_dirs: np.ndarray,
                  per_class: int | None) -> np.ndarray:
    """Gains G [K, H, C] of the class maps: ``G[k, h, c] = <u_{h,c}, e_k>`` for the
    ``per_class`` pairs whose component ``sign(mean s_{h,c}) u_{h,c} / |u_{h,c}|`` has the
    largest cosine with ``e_k`` (ties by index), 0 for the others; every pair when
    ``per_class`` is None.  ``u`` [H, C, D], ``s_mean`` [H * C], ``class_dirs`` [K, D]."""
    u = np.asarray(u, dtype=np.float64)
    h, c, dim = u.shape
    uf = u.reshape(h * c, dim)
    e = np.asarray(class_dirs, dtype=np.float64)
    if e.ndim != 2 or e.shape[1] != dim:
        raise ValueError(f"class directions must be [K, {dim}], got {list(e.shape)}")
    proj = e @ uf.T                                                       # [K, U] <u, e_k>
    if per_class is None:
        return proj.reshape(len(e), h, c)
    if not 1 <= per_class <= h * c:
        raise ValueError(f"pairs per class must be in 1..{h * c}, got {per_class}")
    norms = np.linalg.norm(uf, axis=1) * np.linalg.norm(e, axis=1)[:, None]
    sign = np.where(np.asarray(s_mean) < 0, -1.0, 1.0)
    cos = np.divide(proj * sign, norms, out=np.full_like(proj, -np.inf), where=norms > 0)
    top = np.argsort(-cos, axis=1, kind="stable")[:, :per_class]
    gains = np.zeros_like(proj)
    np.put_along_axis(gains, top, np.take_along_axis(proj, top, 1), 1)
    return gains.reshape(len(e), h, c)


def class_maps(tokens: torch.Tensor, attention: torch.Tensor, gains: torch.Tensor
               ) -> torch.Tensor:
    """M [B, K, P] = ``sum_{h,c} m_{h,c}(p) G[k, h, c]`` (module docstring) from the pool's
    tokens [B, 1 + P, C], attention [B, H, 1 + P]
    (:meth:`~cliplens.core.models.towers.OpenClipResNet.pool_attention`) and gains G [K, H, C],
    without the [B, H, C, P] maps (cost O(B P C H K))."""
    g = gains.to(tokens.dtype)
    n_pos = tokens.shape[1] - 1
    per_pos = torch.einsum("bpc,khc->bphk", tokens[:, 1:], g)            # [B, P, H, K]
    maps = torch.einsum("bhp,bphk->bkp", attention[:, :, 1:], per_pos)
    mean_tok = torch.einsum("bc,khc->bhk", tokens[:, 0], g)              # [B, H, K]
    return maps + torch.einsum("bh,bhk->bk", attention[:, :, 0], mean_tok)[:, :, None] / n_pos


def grid(maps: np.ndarray) -> np.ndarray:
    """[..., P] -> [..., g, g] for a square feature map (ValueError otherwise)."""
    g = int(round(np.sqrt(maps.shape[-1])))
    if g * g != maps.shape[-1]:
        raise ValueError(f"{maps.shape[-1]} positions do not form a square grid")
    return maps.reshape(maps.shape[:-1] + (g, g))
