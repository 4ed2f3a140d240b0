"""A vision tower's pieces, library-independent: pre-LN attention blocks as weights
(:class:`AttentionBlock`), what one block computes (:class:`BlockRun`), attention-pooling heads
(:class:`AttentionPool`), and the layer indexing every study shares.  The towers of
:mod:`cliplens.core.models.towers` build these from each library's modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .layout import resolve_layer, resolve_layers  # noqa: F401 (the layer indexing, torch-free)

# ---------------------------------------------------------------------------------------------
# one attention block, library-independent


@dataclass
class BlockRun:
    """What :meth:`AttentionBlock.run` computed: ``x`` the next residual stream [B, T, D];
    ``q``, ``k``, ``v`` [B, H, T, dh]; ``z`` [B, H, T, dh] each head's attention output before
    the out-projection; ``a`` [B, T, D] the attention output (LayerScale included); ``m``
    [B, T, D] the MLP output."""

    x: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    z: torch.Tensor
    a: torch.Tensor
    m: torch.Tensor


@dataclass
class AttentionWeights:
    """Multi-head attention as weights (``[out, in]``): ``Q = X Wq^T + bq`` (keys, values
    likewise), ``heads`` heads attending with ``softmax(scale Q_h K_h^T)``, out-projection
    ``Wo``, ``bo``."""

    wq: torch.Tensor
    bq: torch.Tensor | None
    wk: torch.Tensor
    bk: torch.Tensor | None
    wv: torch.Tensor
    bv: torch.Tensor | None
    wo: torch.Tensor
    bo: torch.Tensor | None
    heads: int
    scale: float


@dataclass
class AttentionBlock(AttentionWeights):
    """A pre-LN transformer block as weights and callables:
    ``x' = x + a``, ``a = ls1 * (sum_h A_h (LN1(x) Wv_h^T + bv_h) Wo_h^T + bo)``,
    ``x'' = x' + ls2 * MLP(LN2(x'))``."""

    ln1: Callable[[torch.Tensor], torch.Tensor]
    ln2: Callable[[torch.Tensor], torch.Tensor]
    mlp: Callable[[torch.Tensor], torch.Tensor]
    ls1: torch.Tensor | None = None
    ls2: torch.Tensor | None = None
    wqkv: torch.Tensor | None = None  # [3D, D] when q, k, v come from one fused projection
    bqkv: torch.Tensor | None = None
    # the MLP as ``mlp_out(mlp_act(mlp_in(.)))`` where the tower knows its pieces: neuron n's
    # activation is ``mlp_act(mlp_in(LN2(x)))[..., n]``, its write ``mlp_out.weight[:, n]``
    mlp_in: torch.nn.Linear | None = None
    mlp_act: Callable[[torch.Tensor], torch.Tensor] | None = None
    mlp_out: torch.nn.Linear | None = None

    def run(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> BlockRun:
        """The block on ``x`` [B, T, D]; ``mask`` (bool, True = attend) broadcast to
        [B, H, T, T]."""
        h = self.ln1(x)
        if self.wqkv is not None:
            b, t, d = x.shape
            qkv = F.linear(h, self.wqkv, self.bqkv).view(b, t, 3, self.heads, d // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q = split_heads(F.linear(h, self.wq, self.bq), self.heads)
            k = split_heads(F.linear(h, self.wk, self.bk), self.heads)
            v = split_heads(F.linear(h, self.wv, self.bv), self.heads)
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        a = F.linear(z.transpose(1, 2).reshape(x.shape), self.wo, self.bo)
        if self.ls1 is not None:
            a = a * self.ls1
        x = x + a
        m = self.mlp(self.ln2(x))
        if self.ls2 is not None:
            m = m * self.ls2
        return BlockRun(x + m, q, k, v, z, a, m)

    def neurons(self, x_mid: torch.Tensor) -> torch.Tensor:
        """The MLP's neuron activations phi [B, T, N] on the stream after attention ``x_mid``
        [B, T, D] (``BlockRun.x - BlockRun.m``): ``m = ls2 * (phi @ W_out^T + b_out)``."""
        if self.mlp_in is None or self.mlp_act is None or self.mlp_out is None:
            raise NotImplementedError("this block's MLP is not a Linear-activation-Linear stack")
        return self.mlp_act(self.mlp_in(self.ln2(x_mid)))

    def neuron_writes(self, dtype) -> torch.Tensor:
        """W_out [D, N] with LayerScale folded in: neuron n adds ``phi_n * W[:, n]``."""
        if self.mlp_out is None:
            raise NotImplementedError("this block's MLP is not a Linear-activation-Linear stack")
        w = self.mlp_out.weight.to(dtype)
        return w if self.ls2 is None else w * self.ls2.to(dtype)[:, None]

    def out_per_head(self, dtype) -> torch.Tensor:
        """Out-projection per head [H, dh, D] (LayerScale folded in): head h writes
        ``z_h @ W[h]``."""
        d = self.wo.shape[0]
        w = self.wo.to(dtype).T.reshape(self.heads, d // self.heads, d)
        return w if self.ls1 is None else w * self.ls1.to(dtype)

    def out_bias(self, dtype, device) -> torch.Tensor:
        """The out-projection bias [D] (LayerScale folded in; zeros if none)."""
        d = self.wo.shape[0]
        bo = torch.zeros(d, dtype=dtype, device=device) if self.bo is None else self.bo.to(dtype)
        return bo if self.ls1 is None else bo * self.ls1.to(dtype)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, D] -> [B, H, T, dh]."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def mha_weights(attn: torch.nn.MultiheadAttention, what: str):
    """(wq, bq, wk, bk, wv, bv, wo, bo, heads, scale) of a torch ``nn.MultiheadAttention``."""
    if attn.bias_k is not None or attn.bias_v is not None or attn.add_zero_attn:
        raise NotImplementedError(f"{what}: nn.MultiheadAttention with add_bias_kv / add_zero_attn")
    if not attn._qkv_same_embed_dim:
        raise NotImplementedError(f"{what}: nn.MultiheadAttention with separate kdim/vdim")
    wq, wk, wv = attn.in_proj_weight.chunk(3)
    bq = bk = bv = None
    if attn.in_proj_bias is not None:
        bq, bk, bv = attn.in_proj_bias.chunk(3)
    return (wq, bq, wk, bk, wv, bv, attn.out_proj.weight, attn.out_proj.bias,
            int(attn.num_heads), float(attn.head_dim) ** -0.5)


@dataclass
class AttentionPool(AttentionWeights):
    """An attention-pooling head as weights.  ``query``: ``"probe"`` (SigLIP: a learned probe
    [D] attends over the tokens; then ``out + mlp(norm(out))``) or ``"mean"`` (CLIP ResNets:
    the mean of the feature map, prepended as token 0 with ``positional`` [HW + 1, C] added
    to every token, queries them; the output is token 0's)."""

    query: str = "probe"
    probe: torch.Tensor | None = None
    positional: torch.Tensor | None = None
    norm: Callable[[torch.Tensor], torch.Tensor] | None = None
    mlp: Callable[[torch.Tensor], torch.Tensor] | None = None


def ln_affine(ln, d: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(gamma [d], beta [d], eps) of a LayerNorm module (ones / zeros where it has no affine
    part); NotImplementedError for other norms (RMSNorm has no centring to linearise)."""
    if not isinstance(ln, torch.nn.LayerNorm):
        raise NotImplementedError(f"norm {type(ln).__name__} is not a LayerNorm")
    g = torch.ones(d, dtype=dtype, device=device) if ln.weight is None else ln.weight.to(dtype)
    b = torch.zeros(d, dtype=dtype, device=device) if ln.bias is None else ln.bias.to(dtype)
    return g, b, float(ln.eps)


def ln_std(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm's sigma: sqrt(biased variance over the last axis + eps)."""
    return torch.sqrt(x.var(dim=-1, unbiased=False) + eps)


def layer_scale(mod) -> torch.Tensor | None:
    if isinstance(mod, torch.nn.Identity):
        return None
    gamma = getattr(mod, "gamma", None)
    if gamma is None:
        raise NotImplementedError(f"unknown layer-scale module {type(mod).__name__}")
    return gamma
