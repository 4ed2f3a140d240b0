"""Exact direct-effect decomposition of image embeddings (study 001).

:func:`decompose` writes the image embedding ``z`` that ``model.encode_image(pixels,
normalize=False)`` returns as an exact sum of terms -- the embedding term, every attention head
of every layer (summed over source tokens, optionally per source token), every attention
out-projection bias, every MLP output, a constant bias and, for SigLIP, one nonlinear
``pool_mlp`` term::

    z = embed + sum_{l,h} heads[l,h] + sum_l attn_bias[l] + sum_l mlps[l] + rest + bias (+ pool_mlp)

``rest`` holds everything written by layers that were not asked for (``layers=``), so the sum is
exact whatever is kept.  Layers are 0-based block indices (``model.vision_blocks[l]``).  The
tower's pieces (blocks, embeddings, final LayerNorm, projection, pooling head) come from
``model.tower`` (:mod:`cliplens.core.models.towers`); nothing here knows a library.

The residual stream
-------------------
Every supported tower is a pre-LN transformer.  With ``x^0`` the embedded tokens [T, D] (patch +
class + position embeddings, after ``ln_pre`` where the tower has one) and block ``l``::

    x^{l+1} = x^l + a^l + m^l,   a^l = ls1 * (sum_h A^l_h (LN1(x^l) Wv_h^T + bv_h) Wo_h^T + bo)
                                 m^l = ls2 * MLP(LN2(x^l + a^l))

(``A^l_h`` [T, T] the softmax attention of head ``h``, ``Wv_h`` [dh, D] the head's value rows,
``Wo_h`` [D, dh] its out-projection columns, ``ls1``/``ls2`` open_clip's LayerScale, 1 if absent).
So every token of the last stream is ``x^L_t = x^0_t + sum_l (sum_h head^l_{h,t} + ls1*bo^l +
m^l_t)`` with ``head^l_{h,t} = ls1 * sum_s A^l_h[t, s] v^l_{h,s} Wo_h^T`` -- an identity, no
approximation.  The decomposition never builds a [T, T, D] tensor.

CLS-pooled towers (open_clip ``VisionTransformer`` with ``pool_type='tok'``, transformers CLIP)
-------------------------------------------------------------------------------------------
``z = LN_post(x^L_0) @ proj``.  Only the class token (query row 0) reaches the output, so only
row 0 of each attention is decomposed.  LN_post is made linear with the image's recorded
statistics: ``LN(x) = gamma * (x - mu)/sigma + beta`` with ``mu``, ``sigma = sqrt(var + eps)``
of ``x = x^L_0``.  Because ``x - mu = sum_c (c - mean(c))`` (the mean over features is linear),
each term ``c`` [D] maps to::

    c -> (gamma * (c - mean(c)) / sigma) @ proj = (c @ P) / sigma,   P = Cent diag(gamma) proj

(``Cent = I - 11^T/D``), and ``bias = beta @ proj`` (+ the projection's own bias, if any) is one
more term.  The sum of all terms equals ``z`` exactly in exact arithmetic; in floating point it
differs by rounding only (see ``tests/studies/heads/test_decompose.py`` for measured errors).
``heads_cls`` is the part of each head that comes from source token 0 (CLS -> CLS).

Attention-pooled SigLIP towers (transformers ``SiglipModel`` / ``Siglip2Model``)
-------------------------------------------------------------------------------
``z = o + MLP_p(LN_p(o))`` with ``o = MHA(probe, y, y)`` and ``y_t = LN_post(x^L_t)`` for every
patch token ``t`` (no class token: every token reaches the output).  Two facts are recorded on the
real forward pass and then held fixed:

* ``sigma_t`` of LN_post at every token, so ``y_t = gamma * Cent(x^L_t) / sigma_t + beta``;
* the pooling attention ``p[h', t]`` of the probe over the tokens (softmax over valid tokens; for
  NaFlex padded tokens get 0).

With both fixed, ``o`` is affine in the tokens::

    o = sum_{h'} sum_t p[h', t] (y_t Wv_{h'}^T + bv_{h'}) Wo_{h'}^T + bo
      = sum_c  sum_{h'} ( sum_t p[h', t] / sigma_t * gamma * Cent(c_t) ) Wv_{h'}^T Wo_{h'}^T
        + [ (beta Wv^T + bv) Wo^T + bo ]                               (since sum_t p[h', t] = 1)

(``h'`` the pooling head's heads, ``Wv``/``Wo`` its value and out-projection).  The bracket is
image-independent: it is the ``bias`` term.  Every term ``c`` (embedding, head, out-projection
bias, MLP, rest) is a per-token field [T, D] mapped through this linear map.  The pooling head's
residual MLP, ``pool_mlp = MLP_p(LN_p(o))``, is nonlinear in ``o``; it is kept as one extra term
so that ``z = o + pool_mlp`` stays exact.  ``o`` itself (everything but ``pool_mlp``) is the exact
linear part: the direct effect of each component *given* this image's pooling attention and
LN_post statistics.  Per-source-token head contributions use the effective weights
``w[h', h, s] = sum_t p[h', t] / sigma_t * A_h[t, s]`` (this needs each kept layer's full attention
[B, H, T, T], never [T, T, D]).

Not supported (``NotImplementedError``): open_clip ModifiedResNet and timm towers,
``attentional_pool``, ``pool_type`` other than ``'tok'``, ``CustomResidualAttentionBlock``
(qk-norm, scaled-cosine attention, head scaling), cross-attention blocks, key/value biases or
zero-attention in ``nn.MultiheadAttention``, SigLIP towers without the pooling head.

Cost: one forward of the tower (queries, keys and values are computed once and shared by the real
attention and the decomposition) plus small projections batched over layers after the forward.
``per_token=True`` adds a [B, H, T, D_out] computation per kept layer: cheap for CLS-pooled towers
(one [dh, D_out] product per head and token), about twice a tower layer's work for SigLIP (each
source token reaches every pooling head).  Memory grows with the batch and the kept layers, plus
the [B, Lk, H, T, D_out] output with ``per_token``; SigLIP also keeps each kept layer's [B, T, D]
head outputs and MLP output until the pooling weights are known.  ``benchmarks/decompose_speed.py``
measures both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ...core.models.base import ClipModel
from ...core.models.blocks import ln_affine, ln_std, resolve_layers

__all__ = ["Decomposition", "decompose", "resolve_layers"]


@dataclass
class Decomposition:
    """Terms whose sum is the image embedding (``encode_image(normalize=False)``).

    Shapes (B images, Lk kept layers, H heads, T tokens, D = D_out the embedding size):

    ``embed`` [B, D]            the embedded tokens (patch + class + position, after ``ln_pre``)
    ``heads`` [B, Lk, H, D]      each kept (layer, head), summed over source tokens
    ``attn_bias`` [B, Lk, D]     each kept layer's attention out-projection bias (x LayerScale)
    ``mlps`` [B, Lk, D]          each kept layer's MLP output
    ``rest`` [B, D]              everything written by layers that are not kept (0 if all kept)
    ``bias`` [B, D]              image-independent constant (final LN beta through the head)
    ``pool_mlp`` [B, D] | None   SigLIP: the pooling head's nonlinear residual MLP
    ``heads_cls`` [B, Lk, H, D] | None   CLS-pooled towers: the CLS -> CLS part of ``heads``
    ``tokens`` [B, Lk, H, T, D] | None   ``per_token=True``: ``heads`` per source token
                                         (``tokens.sum(3) == heads``)
    ``layers``                   the kept 0-based block indices, in order
    ``norm_std`` [B] or [B, T]   the recorded final-LayerNorm ``sigma`` (per token for SigLIP)
    ``kind``                     ``"cls"`` or ``"attn_pool"``
    """

    embed: torch.Tensor
    heads: torch.Tensor
    attn_bias: torch.Tensor
    mlps: torch.Tensor
    rest: torch.Tensor
    bias: torch.Tensor
    layers: tuple[int, ...]
    norm_std: torch.Tensor
    kind: str
    pool_mlp: torch.Tensor | None = None
    heads_cls: torch.Tensor | None = None
    tokens: torch.Tensor | None = None

    @property
    def n_heads(self) -> int:
        return int(self.heads.shape[2])

    def linear_part(self) -> torch.Tensor:
        """Sum of every term but ``pool_mlp`` [B, D] (SigLIP: the pooled attention output ``o``)."""
        return (self.embed + self.heads.sum(dim=(1, 2)) + self.attn_bias.sum(1) + self.mlps.sum(1)
                + self.rest + self.bias)

    def total(self) -> torch.Tensor:
        """Sum of all terms [B, D]: the image embedding."""
        out = self.linear_part()
        return out if self.pool_mlp is None else out + self.pool_mlp

    def terms(self) -> tuple[torch.Tensor, list[str]]:
        """All terms stacked [B, n_terms, D] and their labels: ``embed``, then per kept layer
        ``L{l}.H{h}`` for each head, ``L{l}.attn_bias``, ``L{l}.mlp``; then ``rest``, ``bias`` and
        (SigLIP) ``pool_mlp``.  ``terms()[0].sum(1) == total()``."""
        parts, labels = [self.embed[:, None]], ["embed"]
        for i, l in enumerate(self.layers):
            parts += [self.heads[:, i], self.attn_bias[:, i, None], self.mlps[:, i, None]]
            labels += [f"L{l}.H{h}" for h in range(self.n_heads)] + [f"L{l}.attn_bias", f"L{l}.mlp"]
        parts += [self.rest[:, None], self.bias[:, None]]
        labels += ["rest", "bias"]
        if self.pool_mlp is not None:
            parts.append(self.pool_mlp[:, None])
            labels.append("pool_mlp")
        return torch.cat(parts, dim=1), labels



def _decompose_cls(x0, blocks, ln_post, proj, proj_bias, kept, per_token, cdt):
    """x0 [B, T, D] embedded tokens; proj [D, Dout] or None; returns a Decomposition.

    During the forward only the class token's pieces of each kept layer are kept (its attention
    output per head, its value, its attention row, its MLP output); the projections through
    ``P / sigma`` run once, batched over layers, after the forward (sigma is known only then)."""
    B, T, D = x0.shape
    dev = x0.device
    gamma, beta, eps = ln_affine(ln_post, D, cdt, dev)
    proj_c = torch.eye(D, dtype=cdt, device=dev) if proj is None else proj.to(cdt)
    G = gamma[:, None] * proj_c
    P = G - G.mean(dim=0, keepdim=True)  # Cent diag(gamma) proj  [D, Dout]
    bias = beta @ proj_c
    if proj_bias is not None:
        bias = bias + proj_bias.to(cdt)

    Dout = P.shape[1]
    Lk, H = len(kept), blocks[0].heads
    tokens = x0.new_empty((B, Lk, H, T, Dout), dtype=cdt) if per_token else None
    zc, vc, a0s, m0 = [], [], [], []
    rest = torch.zeros(B, D, dtype=cdt, device=dev)
    x = x0
    for l, blk in enumerate(blocks):
        r = blk.run(x, None)
        x, q, k, v, z, a, m = r.x, r.q, r.k, r.v, r.z, r.a, r.m
        if l not in kept:
            rest = rest + a[:, 0].to(cdt) + m[:, 0].to(cdt)
            continue
        # copies, so that the layer's full [B, T, .] tensors are freed
        zc.append(z[:, :, 0].clone())                              # CLS query row [B, H, dh]
        vc.append(v[:, :, 0].clone())                              # CLS value [B, H, dh]
        m0.append(m[:, 0].clone())                                 # [B, D]
        # the CLS query's attention row (for CLS -> CLS and per-token terms)
        a0 = torch.softmax(torch.einsum("bhk,bhtk->bht", q[:, :, 0].to(cdt), k.to(cdt))
                           * blk.scale, dim=-1)                    # [B, H, T]
        a0s.append(a0[:, :, 0].clone())
        if per_token:
            WP = torch.einsum("hkd,de->hke", blk.out_per_head(cdt), P)   # [H, dh, Dout]
            tokens[:, len(a0s) - 1] = torch.einsum("bhtk,hke->bhte", v.to(cdt), WP).mul_(
                a0[..., None])
        del q, k, v, z, a, m
    sigma = ln_std(x[:, 0].to(cdt), eps)                             # [B]
    s = sigma[:, None]
    if Lk:
        W = torch.stack([blocks[l].out_per_head(cdt) for l in kept])          # [Lk, H, dh, D]
        Z = torch.stack(zc, 1).to(cdt)                                       # [B, Lk, H, dh]
        heads = torch.einsum("blhk,lhkd->blhd", Z, W) @ P
        V0 = torch.stack(vc, 1).to(cdt) * torch.stack(a0s, 1)[..., None]
        heads_cls = torch.einsum("blhk,lhkd->blhd", V0, W) @ P
        attn_bias = (torch.stack([blocks[l].out_bias(cdt, dev) for l in kept]) @ P).expand(B, -1, -1)
        mlps = torch.stack(m0, 1).to(cdt) @ P
    else:
        heads = heads_cls = x0.new_zeros((B, 0, H, Dout), dtype=cdt)
        attn_bias = mlps = x0.new_zeros((B, 0, Dout), dtype=cdt)
    if per_token:
        tokens.div_(s[:, :, None, None, None])
    return Decomposition(
        embed=(x0[:, 0].to(cdt) @ P) / s,
        heads=heads / s[:, :, None, None],
        attn_bias=attn_bias / s[:, :, None],
        mlps=mlps / s[:, :, None],
        rest=(rest @ P) / s,
        bias=bias.expand(B, -1).clone(),
        layers=tuple(kept),
        norm_std=sigma,
        kind="cls",
        heads_cls=heads_cls / s[:, :, None, None],
        tokens=tokens,
    )


def _decompose_attn_pool(tower, pixels, kept_arg, per_token, cdt):
    """The attention-pooled (SigLIP) decomposition; see the module docstring."""
    pool = tower.attention_pool()
    blocks = tower.blocks()
    kept = resolve_layers(kept_arg, len(blocks))
    dtype = tower.dtype
    x0, valid = tower.embed(pixels)                                 # valid [B, T] or None
    B, T, D = x0.shape
    dev = x0.device
    mask = None if valid is None else valid[:, None, None, :]      # bool, True = attend

    # the tower, keeping what the kept layers need
    x = x0
    rest = torch.zeros_like(x0, dtype=cdt)
    store = []
    for l, blk in enumerate(blocks):
        r = blk.run(x, mask)
        x, q, k, v, z, a, m = r.x, r.q, r.k, r.v, r.z, r.a, r.m
        if l not in kept:
            rest += a.to(cdt) + m.to(cdt)
        else:
            store.append((blk, z, m, (q, k, v) if per_token else None))

    # final LayerNorm statistics and the pooling attention, recorded on this forward
    gamma, beta, eps = ln_affine(tower.final_norm, D, cdt, dev)
    sigma = ln_std(x.to(cdt), eps)                                     # [B, T]
    y = tower.final_norm(x)
    wq, bq, wk, bk, wv, bv = pool.wq, pool.bq, pool.wk, pool.bk, pool.wv, pool.bv
    wo_p, bo_p, Hp, scale_p = pool.wo, pool.bo, pool.heads, pool.scale
    dhp = D // Hp
    qp = F.linear(pool.probe.reshape(1, D), wq, bq).to(cdt).view(Hp, dhp)        # [H', dh]
    kp = F.linear(y, wk, bk).to(cdt).view(B, T, Hp, dhp)
    logits = torch.einsum("pk,btpk->bpt", qp, kp) * scale_p                     # [B, H', T]
    if valid is not None:
        logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
    p = torch.softmax(logits, dim=-1)
    alpha = p / sigma[:, None, :]                                                # [B, H', T]
    # the real pooled output o and the head's residual MLP
    vp = F.linear(y, wv, bv).to(cdt).view(B, T, Hp, dhp)
    o = F.linear(torch.einsum("bpt,btpk->bpk", p, vp).reshape(B, D), wo_p.to(cdt),
                 None if bo_p is None else bo_p.to(cdt))
    pool_mlp = pool.mlp(pool.norm(o.to(dtype))).to(cdt)

    wv_c = wv.to(cdt).view(Hp, dhp, D)
    wo_c = wo_p.to(cdt)
    gm = gamma

    def through(r: torch.Tensor) -> torch.Tensor:
        """[..., H', D] pooled-and-scaled residual vectors -> [..., Dout]: centre, gamma,
        each pooling head's value rows, then the pooling out-projection."""
        r = (r - r.mean(dim=-1, keepdim=True)) * gm
        hv = torch.einsum("...pd,pkd->...pk", r, wv_c)
        return hv.reshape(*hv.shape[:-2], D) @ wo_c.T

    def field(c: torch.Tensor) -> torch.Tensor:
        """A per-token term [B, T, D] -> its direct effect [B, Dout]."""
        return through(torch.einsum("bpt,btd->bpd", alpha, c.to(cdt)))

    bias = F.linear(beta, wv.to(cdt), None if bv is None else bv.to(cdt)) @ wo_c.T
    if bo_p is not None:
        bias = bias + bo_p.to(cdt)
    asum = alpha.sum(-1)                                                         # [B, H']
    H = blocks[0].heads
    heads, attn_bias, mlps = [], [], []
    tokens = x0.new_empty((B, len(kept), H, T, D), dtype=cdt) if per_token else None
    for i, (blk, z, m, qkv) in enumerate(store):
        W = blk.out_per_head(cdt)                                                  # [H, dh, D]
        rz = torch.einsum("bpt,bhtk->bphk", alpha, z.to(cdt))                    # [B, H', H, dh]
        r = torch.einsum("bphk,hkd->bhpd", rz, W)                                # [B, H, H', D]
        heads.append(through(r))
        attn_bias.append(through(asum[:, :, None] * blk.out_bias(cdt, dev)))
        mlps.append(field(m))
        if per_token:
            q, k, v = (t.to(cdt) for t in qkv)
            att = torch.einsum("bhtk,bhsk->bhts", q, k) * blk.scale
            if valid is not None:
                att = att.masked_fill(~valid[:, None, None, :], float("-inf"))
            att = torch.softmax(att, dim=-1)                                     # [B, H, T, T]
            w = torch.einsum("bpt,bhts->bhsp", alpha, att)                       # [B, H, T, H']
            del att
            # K[h, :, h', :] = W_h Cent diag(gamma) Wv_{h'}^T: layer head h's value -> pooling
            # head h''s value, one [D, D] product per layer instead of one per token
            Wf = W.reshape(D, D)
            K = ((Wf - Wf.mean(dim=-1, keepdim=True)) * gm) @ wv_c.reshape(D, D).T
            K = K.view(blk.heads, D // blk.heads, Hp, dhp)
            g = torch.einsum("bhsk,hkpj->bhspj", v, K) * w[..., None]            # [B, H, T, H', dh]
            torch.matmul(g.reshape(B, blk.heads, T, D), wo_c.T, out=tokens[:, i])
            del g
        store[i] = None  # free the layer's stored tensors as soon as they are used

    def stack(parts, shape):
        return torch.stack(parts, 1) if parts else x0.new_zeros(shape, dtype=cdt)

    return Decomposition(
        embed=field(x0),
        heads=stack(heads, (B, 0, H, D)),
        attn_bias=stack(attn_bias, (B, 0, D)),
        mlps=stack(mlps, (B, 0, D)),
        rest=field(rest),
        bias=bias.expand(B, -1).clone(),
        layers=tuple(kept),
        norm_std=sigma,
        kind="attn_pool",
        pool_mlp=pool_mlp,
        tokens=tokens,
    )


def decompose(
    model: ClipModel,
    pixels: torch.Tensor,
    layers: int | Sequence[int] | None = None,
    per_token: bool = False,
    *,
    dtype: torch.dtype = torch.float32,
) -> Decomposition:
    """Exact direct-effect decomposition of ``model.encode_image(pixels, normalize=False)``.

    ``pixels`` [B, 3, S, S] as ``model.preprocess`` returns them.  ``layers``: ``None`` keeps every
    block, an int ``k`` the last ``k`` blocks, a sequence those 0-based block indices (negative
    from the end); blocks not kept are folded into ``rest``.  ``per_token=True`` also returns the
    per-source-token head contributions ``tokens`` [B, Lk, H, T, D_out] (T counts the class token
    first for CLS-pooled towers; NaFlex padding gets zeros).  The tower runs in its own dtype; the
    decomposition is computed and returned in ``dtype``.  Runs without autograd.

    Supported: towers whose ``pooling`` is ``"cls"`` (open_clip ``VisionTransformer``, real and
    toy; transformers ``CLIPModel``) or ``"attn_pool"`` (transformers ``SiglipModel`` /
    ``Siglip2Model``).  See the module docstring for the mathematics and for what is exact.
    """
    tower = model.tower
    if tower.pooling not in ("cls", "attn_pool"):
        tower.blocks()  # raises the tower's own reason where it has one
        raise NotImplementedError(f"{model.spec}: {type(tower.module).__name__} towers (pooling "
                                  f"{tower.pooling!r}) are not decomposed")
    with torch.no_grad():
        if tower.pooling == "cls":
            blocks = tower.blocks()
            kept = resolve_layers(layers, len(blocks))
            x0, _ = tower.embed(pixels)
            proj, proj_bias = tower.image_projection()
            return _decompose_cls(x0, blocks, tower.final_norm, proj, proj_bias, kept, per_token,
                                  dtype)
        return _decompose_attn_pool(tower, pixels, layers, per_token, dtype)
