"""Second-order effects of a ViT's MLP neurons: each neuron of block l carried to the image
embedding through the later attention heads, with this image's attention patterns and
LayerNorm scales held fixed.

Notation (one image; T tokens, token 0 the class token; D width; N neurons; O output width):
neuron n of block l writes ``phi_n(t) w_n`` into the stream at token t (``w_n`` [D] the MLP's
out-projection column, LayerScale folded in).  Block j > l reads ``LN1_j(x)[t] = gamma_j *
(x[t] - mu_j[t]) / sigma_j[t] + beta_j`` and head h adds at token t
``ls_j * Wo_h sum_s A_jh[t, s] (Wv_h LN1_j(x)[s] + bv_h)``; the embedding is ``(gamma_p *
(x_L[0] - mu_p) / sigma_p + beta_p) @ proj``.

Two variants (both offered, both reported):

* :func:`exact_effects` -- sigma_j, sigma_p and the attention patterns A fixed at this image's
  values, every later MLP held at its recorded output; the centring of each LayerNorm is
  linear and kept.  The embedding is then affine in the block-l neurons, and neuron n's
  effect is that linear map applied to ``phi_n (x) w_n``: every path (direct, through one later
  attention layer, through chains of them), no bias, in raw embedding units.  Zeroing neuron n
  in that frozen model moves the embedding by exactly its effect.  Computed as a Jacobian: the
  readout's adjoint [O, T, D] pulled back through the later layers, then contracted with
  ``W_out`` and phi (cost O(L' O T D^2 + O T D N) per image).
* :func:`published_effects` -- the second-order lens as published: paths through one later
  attention layer j at a time, summed over j > l and heads h, no direct path; each LayerNorm's
  recorded mean and every bias (MLP out, value, attention out, LayerNorm beta) shared equally
  among the terms (divided by (1 + 2j) N, (1 + 2j) H N and (1 + 2j)(1 + 2L) H N for the final
  norm, L the number of blocks), the contribution itself not centred; scaled by
  100 / ||embedding||.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.models.blocks import AttentionBlock, ln_affine, ln_std


@dataclass
class NeuronRecord:
    """What one forward pass records for the neurons of block ``layer`` (B images):

    ``phi`` [B, T, N] activations; ``attn[i]`` [B, H, T, T], ``mu1[i]``, ``sigma1[i]`` [B, T]
    of each later block ``later[i]``; ``mu_post``, ``sigma_post`` [B] of the final LayerNorm on
    the class token; ``embedding`` [B, O] the model's own; ``n_blocks`` L; ``blocks`` the
    tower's blocks as weights (:meth:`~cliplens.core.models.towers.VisionTower.blocks`)."""

    layer: int
    later: list[int]
    phi: torch.Tensor
    attn: list[torch.Tensor]
    mu1: list[torch.Tensor]
    sigma1: list[torch.Tensor]
    mu_post: torch.Tensor
    sigma_post: torch.Tensor
    embedding: torch.Tensor
    n_blocks: int
    blocks: list[AttentionBlock]


def neuron_block(layer: int, n_blocks: int, spec: str = "model") -> int:
    """Block index of an MLP layer (negative counts from the end); ValueError naming the
    range."""
    idx = layer + n_blocks if layer < 0 else layer
    if not 0 <= idx < n_blocks:
        raise ValueError(f"{spec}: MLP layer {layer} is outside its {n_blocks} blocks "
                         f"(0..{n_blocks - 1}, or -{n_blocks}..-1)")
    return idx


def _vit(model):
    tower = model.tower
    if tower.pooling != "cls":
        raise NotImplementedError(
            f"{model.spec}: second-order neuron effects need a class-token ViT (open_clip or "
            f"transformers CLIP); its tower pools with {tower.pooling!r} "
            f"({type(tower.module).__name__})")
    return tower


def record_neurons(model, pixels: torch.Tensor, layer: int) -> NeuronRecord:
    """Run ``model``'s tower on ``pixels`` block by block (the tower's one access point) and
    record what both variants need for the neurons of block ``layer``."""
    tower = _vit(model)
    blocks = tower.blocks()
    L = len(blocks)
    lay = neuron_block(layer, L, model.spec)
    x, _ = tower.embed(pixels)
    rec = dict(attn=[], mu1=[], sigma1=[])
    for j, blk in enumerate(blocks):
        if j > lay:
            _, _, eps = ln_affine(blk.ln1, x.shape[-1], x.dtype, x.device)
            rec["mu1"].append(x.mean(-1))
            rec["sigma1"].append(ln_std(x, eps))
        run = blk.run(x)
        if j > lay:
            rec["attn"].append(torch.softmax(blk.scale * (run.q @ run.k.transpose(-1, -2)), -1))
        if j == lay:
            rec["phi"] = blk.neurons(run.x - run.m)
        x = run.x
    _, _, eps = ln_affine(tower.final_norm, x.shape[-1], x.dtype, x.device)
    return NeuronRecord(layer=lay, later=list(range(lay + 1, L)), phi=rec["phi"],
                        attn=rec["attn"], mu1=rec["mu1"], sigma1=rec["sigma1"],
                        mu_post=x[:, 0].mean(-1), sigma_post=ln_std(x[:, 0], eps),
                        embedding=tower.pool(x), n_blocks=L, blocks=blocks)


def _centre(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


def _attention_adjoint(g: torch.Tensor, blk: AttentionBlock, attn: torch.Tensor,
                       sigma: torch.Tensor) -> torch.Tensor:
    """The adjoint of the frozen attention layer ``delta -> a(delta)`` applied to g
    [B, O, T, D]: ``a^T(g)[s] = C(gamma * Wv^T sum_t A[t, s] Wo^T (ls g[t])) / sigma[s]``
    (C the centring over D, heads kept apart)."""
    b, o, t, d = g.shape
    gamma, _, _ = ln_affine(blk.ln1, d, g.dtype, g.device)
    if blk.ls1 is not None:
        g = g * blk.ls1.to(g.dtype)
    gz = g @ blk.wo.to(g.dtype)                                   # [B, O, T, Dv]
    dv = gz.shape[-1]
    gz = gz.view(b, o, t, blk.heads, dv // blk.heads)
    gv = torch.einsum("bhts,bothk->boshk", attn.to(g.dtype), gz).reshape(b, o, t, dv)
    gh = (gv @ blk.wv.to(g.dtype)) * gamma
    return _centre(gh) / sigma.to(g.dtype)[:, None, :, None]


def readout_jacobian(model, rec: NeuronRecord, paths: str = "all") -> torch.Tensor:
    """G [B, O, T, D]: the frozen embedding's derivative with respect to the stream after
    block ``rec.layer``.  ``paths``: ``"all"`` (direct + every chain of later attention layers),
    ``"direct"`` (the final LayerNorm and projection only) or ``"single"`` (through exactly one
    later attention layer)."""
    if paths not in ("all", "direct", "single"):
        raise ValueError(f"paths must be 'all', 'direct' or 'single', got {paths!r}")
    tower = _vit(model)
    blocks = rec.blocks
    phi = rec.phi
    b, t, _ = phi.shape
    proj, _ = tower.image_projection()
    d = blocks[0].wo.shape[0]
    dt = rec.embedding.dtype
    gamma_p, _, _ = ln_affine(tower.final_norm, d, dt, phi.device)
    readout = gamma_p[:, None] * (proj.to(dt) if proj is not None else
                                  torch.eye(d, dtype=dt, device=phi.device))   # [D, O]
    g0 = torch.zeros(b, readout.shape[1], t, d, dtype=dt, device=phi.device)
    g0[:, :, 0] = _centre(readout.T)[None] / rec.sigma_post[:, None, None]
    if paths == "direct":
        return g0
    g = g0.clone()
    if paths == "single":
        g = torch.zeros_like(g0)
        for i, j in enumerate(rec.later):
            g = g + _attention_adjoint(g0, blocks[j], rec.attn[i], rec.sigma1[i])
        return g
    for i, j in reversed(list(enumerate(rec.later))):
        g = g + _attention_adjoint(g, blocks[j], rec.attn[i], rec.sigma1[i])
    return g


def exact_effects(model, rec: NeuronRecord, paths: str = "all") -> torch.Tensor:
    """Every neuron's exact effect [B, N, O] (module docstring):
    ``effect[b, n] = sum_t phi[b, t, n] G[b, :, t, :] @ w_n`` with G from
    :func:`readout_jacobian` (``paths`` as there)."""
    g = readout_jacobian(model, rec, paths)
    w = rec.blocks[rec.layer].neuron_writes(g.dtype)                # [D, N]
    gw = torch.einsum("botd,dn->botn", g, w)
    return torch.einsum("btn,botn->bno", rec.phi.to(g.dtype), gw)


def published_effects(model, rec: NeuronRecord, coefficient: float = 100.0) -> torch.Tensor:
    """Every neuron's second-order effect [B, N, O] as published (module docstring):
    ``coefficient / ||embedding|| * sum_{j > l, h} (lin_jh[n] + const_jh)`` where

    * ``lin_jh[n] = (sum_t A_jh[0, t] phi_n(t) / sigma_j[t]) / sigma_p *
      (gamma_p * ls_j Wo_h Wv_h (gamma_j * w_n)) @ proj``, and
    * ``const_jh`` (the same for every neuron) carries this layer's and head's equal shares of
      the MLP bias, the recorded LayerNorm means and the biases."""
    tower = _vit(model)
    blocks = rec.blocks
    phi = rec.phi
    dt = phi.dtype
    dev = phi.device
    b, t, n = phi.shape
    L = rec.n_blocks
    proj, _ = tower.image_projection()
    mlp = blocks[rec.layer]
    w = mlp.neuron_writes(dt)                                      # [D, N]
    d = w.shape[0]
    b_out = mlp.mlp_out.bias.to(dt) if mlp.mlp_out.bias is not None else torch.zeros(d, dtype=dt,
                                                                                      device=dev)
    if mlp.ls2 is not None:
        b_out = b_out * mlp.ls2.to(dt)
    gamma_p, beta_p, _ = ln_affine(tower.final_norm, d, dt, dev)
    proj = proj.to(dt) if proj is not None else torch.eye(d, dtype=dt, device=dev)
    sig_p = rec.sigma_post.to(dt)                                  # [B]
    total = torch.zeros(b, n, proj.shape[1], dtype=dt, device=dev)
    for i, j in enumerate(rec.later):
        blk = blocks[j]
        H = blk.heads
        gamma, beta, _ = ln_affine(blk.ln1, d, dt, dev)
        wo_h = blk.out_per_head(dt)                                # [H, dh, D] (ls folded)
        dh = wo_h.shape[1]
        wv_h = blk.wv.to(dt).view(H, dh, d)                        # [H, dh, D]
        bv_h = (blk.bv.to(dt) if blk.bv is not None else torch.zeros(H * dh, dtype=dt,
                                                                     device=dev)).view(H, dh)
        bo = blk.out_bias(dt, dev)                                 # [D] (ls folded)
        a0 = rec.attn[i][:, :, 0].to(dt)                           # [B, H, T] class-token row
        sig = rec.sigma1[i].to(dt)                                 # [B, T]
        k_j = (1 + 2 * j) * n
        k_post = (1 + 2 * j) * (1 + 2 * L) * H * n
        # linear part: a scalar per (image, head, neuron) times a direction per (head, neuron)
        coef = torch.einsum("bht,btn->bhn", a0, phi.to(dt) / sig[..., None])
        vw = torch.einsum("hkd,dn->hkn", wv_h, gamma[:, None] * w)           # [H, dh, N]
        head_out = torch.einsum("hkn,hkd->hnd", vw, wo_h)                    # [H, N, D]
        dirs = (head_out * gamma_p) @ proj                                    # [H, N, O]
        total += torch.einsum("bhn,hno->bno", coef, dirs) / sig_p[:, None, None]
        # constant part: the shares of biases and recorded means, the same for every neuron
        y = b_out / n - rec.mu1[i].to(dt)[..., None] / k_j                    # [B, T, D]
        normed = gamma * y / sig[..., None] + beta / k_j
        v = torch.einsum("btd,hkd->bhtk", normed, wv_h) + bv_h[None, :, None] / k_j
        z = torch.einsum("bht,bhtk->bhk", a0, v)                               # [B, H, dh]
        ret = torch.einsum("bhk,hkd->bhd", z, wo_h) + bo / (k_j * H)           # [B, H, D]
        post = ((ret - rec.mu_post.to(dt)[:, None, None] / k_post) * gamma_p
                / sig_p[:, None, None] + beta_p / k_post)
        total += (post @ proj).sum(1)[:, None, :]
    scale = coefficient / rec.embedding.to(dt).norm(dim=-1)
    return total * scale[:, None, None]
