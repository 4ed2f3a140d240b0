"""Neuron-head pairs of a CLIP ResNet's attention pool, exactly.

The attention pool of an open_clip ``ModifiedResNet`` reads the last feature map as tokens
``t(p)`` [C] (p = 0 the map's mean, 1..HW its positions, the positional embedding added to
each), and each head h (of H, width dh = C / H) writes

    z_h = sum_p a_h(p) (Wv_h t(p) + bv_h),   out = sum_h Wo_h z_h + bo,

with ``a_h`` the softmax attention of the mean token's query (sum_p a_h(p) = 1).  The values are
linear in the channels c, so

    out = sum_{h, c} s_{h,c} u_{h,c} + (Wo bv + bo),
    s_{h,c}(x) = sum_p a_h(p) t_c(p)         (a scalar per image),
    u_{h,c}    = Wo_h Wv_h[:, c]             (a direction [D] fixed by the weights).

The pair (h, c)'s term r_{h,c}(x) = s_{h,c}(x) u_{h,c} is rank one over images, so a store of
pairs holds the scalars [N, H, C] and the directions [H, C, D] once, not [N, H, C, D].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.models.blocks import AttentionPool


def _check_pool(pool: AttentionPool, what: str) -> None:
    if pool.query != "mean":
        raise NotImplementedError(f"{what}: neuron-head pairs need a CLIP ResNet attention pool "
                                  f"(mean-token query), not a {pool.query!r} pool")


def pair_directions(pool: AttentionPool) -> torch.Tensor:
    """u [H, C, D]: ``u[h, c] = Wo[:, h-slice] @ Wv[h-slice, c]`` (``Wv`` [C, C], ``Wo`` [D, C]
    as ``nn.Linear`` weights)."""
    _check_pool(pool, "pair_directions")
    wv, wo, h = pool.wv.detach(), pool.wo.detach(), pool.heads
    c_in = wv.shape[1]
    dh = wv.shape[0] // h
    wv_h = wv.reshape(h, dh, c_in)                               # [H, dh, C]
    wo_h = wo.reshape(wo.shape[0], h, dh).permute(1, 0, 2)       # [H, D, dh]
    return torch.einsum("hdk,hkc->hcd", wo_h, wv_h)


def pair_bias(pool: AttentionPool) -> torch.Tensor:
    """The term no pair carries, ``Wo bv + bo`` [D] (zeros for absent biases)."""
    _check_pool(pool, "pair_bias")
    wo = pool.wo.detach()
    out = torch.zeros(wo.shape[0], dtype=wo.dtype, device=wo.device)
    if pool.bv is not None:
        out = out + wo @ pool.bv.detach()
    if pool.bo is not None:
        out = out + pool.bo.detach()
    return out


def pair_scalars(tokens: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """s [B, H, C] = ``sum_p a[b, h, p] t[b, p, c]`` from the pool's tokens [B, T, C] and
    attention [B, H, T] (:meth:`~cliplens.core.models.towers.OpenClipResNet.pool_attention`)."""
    return torch.einsum("bhp,bpc->bhc", attention, tokens)


def pair_terms(scalars: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """The pairs' vectors r [B, H, C, D] = s [B, H, C] x u [H, C, D] (only for small cases: the
    point of the scalars is never to build this)."""
    return scalars[..., None] * directions


@dataclass
class PairDecomposition:
    """scalars [B, H, C], directions [H, C, D], bias [D]:
    ``embedding = einsum('bhc,hcd->bd', scalars, directions) + bias``."""

    scalars: torch.Tensor
    directions: torch.Tensor
    bias: torch.Tensor

    def embedding(self) -> torch.Tensor:
        """The image embedding [B, D] the terms sum to."""
        return torch.einsum("bhc,hcd->bd", self.scalars, self.directions) + self.bias


def decompose_pairs(model, pixels: torch.Tensor) -> PairDecomposition:
    """The pair decomposition of ``model``'s embedding of ``pixels`` [B, 3, S, S]: the feature
    map is taken from the library's own forward (``tower.pooling_input``), the pool's tokens and
    attention from the tower's weights.  Raises NotImplementedError naming the model for towers
    without a CLIP ResNet attention pool (ViTs, timm towers, average pooling)."""
    tower = model.tower
    if tower.pooling != "attn_pool2d":
        raise NotImplementedError(
            f"{model.spec}: neuron-head pairs need a CLIP ResNet with attention pooling "
            f"(open_clip ModifiedResNet); its tower pools with {tower.pooling!r} "
            f"({type(tower.module).__name__})")
    pool = tower.attention_pool()
    fmap = tower.pooling_input(pixels)
    tokens, attention = tower.pool_attention(fmap)
    return PairDecomposition(pair_scalars(tokens, attention), pair_directions(pool),
                             pair_bias(pool))
