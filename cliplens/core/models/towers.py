"""The one place that knows each library's vision tower internals.

Studies never branch on a model's library: they ask ``model.tower`` (a :class:`VisionTower`) for
what they need, and a new architecture is supported by adding a class here and a line in
:func:`tower_of`.

What a tower offers (shapes: B images, T tokens, D width, P patch tokens):

* ``modules`` -- the residual blocks (ViT) or stages (ResNet) in order, for forward hooks;
* :meth:`VisionTower.blocks` -- each pre-LN transformer block as an :class:`AttentionBlock`
  (weights in ``[out, in]`` layout, LayerNorms, MLP, LayerScale), whose :meth:`AttentionBlock.run`
  returns every attention internal (queries, keys, values, per-head outputs, the attention and
  MLP outputs) of one block;
* :meth:`VisionTower.embed` -- the tokens ``x^0`` entering block 0 [B, T, D] (patch, class and
  position embeddings, after ``ln_pre`` where the tower has one) and the valid-token mask;
* :meth:`VisionTower.residual_stream` -- ``x^0 .. x^L`` computed block by block from the pieces
  above, and :meth:`VisionTower.pool` -- the image embedding from ``x^L``; tests hold
  ``pool(residual_stream(x)[-1])`` against the model's own ``encode_image``;
* the pooling head: ``pooling`` is ``"cls"`` (final LayerNorm of the class token, then
  :meth:`VisionTower.image_projection`), ``"attn_pool"`` (SigLIP: a probe attending over the
  final-normed tokens, :meth:`VisionTower.attention_pool`) or ``"attn_pool2d"`` (CLIP ResNets:
  the mean token queries the feature map, :meth:`VisionTower.attention_pool`);
* :meth:`VisionTower.hidden_tokens` -- the patch tokens of any hidden state (by a forward hook on
  the library's own forward, so they are exactly what the model computes);
* projections: :meth:`VisionTower.image_projection` and :func:`text_projection`, the live
  parameters (``[D_in, D_out]`` as the model multiplies them);
  :func:`cliplens.core.models.projections.projections_removed` makes ``encode_image`` /
  ``encode_text`` return what enters them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .blocks import (AttentionBlock, AttentionPool, layer_scale, mha_weights, resolve_layer,
                     split_heads)

__all__ = ["HFViT", "OpenClipResNet", "OpenClipTimm", "OpenClipViT", "VisionTower",
           "text_projection", "tower_of"]


# ---------------------------------------------------------------------------------------------
# towers


class _Captured(Exception):
    """Raised by a capture hook to stop the forward pass once the tensor is in hand."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value


def _mlp_parts(mlp, fc_in: str, act: str, fc_out: str) -> dict:
    """``mlp_in``, ``mlp_act``, ``mlp_out`` of an MLP built as Linear, activation, Linear (the
    names the library gives them); empty when it is built otherwise (neurons then unavailable)."""
    parts = [getattr(mlp, n, None) for n in (fc_in, act, fc_out)]
    if not (isinstance(parts[0], torch.nn.Linear) and isinstance(parts[2], torch.nn.Linear)
            and callable(parts[1])):
        return {}
    return dict(zip(("mlp_in", "mlp_act", "mlp_out"), parts))


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class VisionTower:
    """Library-independent access to the vision tower of a ``ClipModel`` (module docstring).
    Subclasses override what their architecture has; the rest raises NotImplementedError
    naming the model."""

    pooling = "unknown"

    def __init__(self, model):
        self.model = model  # the ClipModel adapter
        self.spec = model.spec

    # -- structure ------------------------------------------------------------------------
    @property
    def modules(self) -> list[torch.nn.Module]:
        raise NotImplementedError(f"{self.spec}: no known block structure")

    @property
    def n_blocks(self) -> int:
        return len(self.modules)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def _unsupported(self, what: str) -> NotImplementedError:
        return NotImplementedError(f"{self.spec}: {type(self.module).__name__} towers have no "
                                   f"{what} here")

    def blocks(self) -> list[AttentionBlock]:
        raise self._unsupported("pre-LN attention blocks")

    def patch_size(self) -> int:
        raise TypeError(f"{self.spec}: {type(self.module).__name__} has no patch grid (token "
                        "caches need a ViT)")

    def grid(self) -> tuple[int, int]:
        """(gh, gw) of the patch grid for the model's square input."""
        p = self.patch_size()
        if self.model.image_size % p:
            raise ValueError(f"{self.spec}: image size {self.model.image_size} is not a multiple "
                             f"of the patch size {p}")
        g = self.model.image_size // p
        return g, g

    def run(self, pixels: torch.Tensor) -> None:
        """The library's own forward of the tower (hooks observe it)."""
        self.module(pixels.to(self.model.device, dtype=self.dtype))

    def embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise self._unsupported("token embedding")

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The P patch tokens of a sequence [B, T, D]: prefix tokens (class token, registers)
        are the first T - P."""
        gh, gw = self.grid()
        P = gh * gw
        if x.shape[1] < P:
            raise RuntimeError(f"{self.spec}: {x.shape[1]} tokens < {P} patches")
        return x[:, x.shape[1] - P:]

    @property
    def final_norm(self) -> torch.nn.Module:
        raise self._unsupported("final LayerNorm")

    def image_projection(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(W [D, D_out] or None, bias [D_out] or None) after the pooled token."""
        raise self._unsupported("image projection")

    def attention_pool(self) -> AttentionPool:
        raise self._unsupported("attention-pooling head")

    def pool(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The image embedding from the last residual stream ``x^L`` [B, T, D]."""
        raise self._unsupported("pooling from the residual stream")

    # -- generic --------------------------------------------------------------------------
    def residual_stream(self, pixels: torch.Tensor) -> tuple[list[torch.Tensor],
                                                              torch.Tensor | None]:
        """(``[x^0, .., x^L]``, valid mask): the stream before the first block and after each,
        computed with :meth:`AttentionBlock.run`."""
        x, valid = self.embed(pixels)
        mask = None if valid is None else valid[:, None, None, :]
        out = [x]
        for blk in self.blocks():
            x = blk.run(x, mask).x
            out.append(x)
        return out, valid

    def hidden_tokens(self, pixels: torch.Tensor, layer: int = -2) -> torch.Tensor:
        """Patch tokens [B, P, D] (float32) of hidden state ``layer`` (see
        :func:`resolve_layer`) of pixels [B, 3, S, S], taken from the library's own forward by
        a hook that stops it there.  Grad mode is the caller's."""
        blocks = self.modules
        idx = resolve_layer(int(layer), len(blocks))
        self.grid()  # a patch grid is needed
        if idx == 0:
            def pre_hook(_mod, args, kwargs):
                raise _Captured(args[0] if args else kwargs["hidden_states"])
            handle = blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:
            def hook(_mod, _args, out):
                raise _Captured(_first(out))
            handle = blocks[idx - 1].register_forward_hook(hook)
        try:
            self.run(pixels)
        except _Captured as cap:
            x = cap.value
        else:  # pragma: no cover - the hooked block always runs
            raise RuntimeError(f"{self.spec}: block {idx} never ran")
        finally:
            handle.remove()
        if x.ndim != 3:
            raise RuntimeError(f"{self.spec}: block output has shape {tuple(x.shape)}, "
                               "expected [B, T, D]")
        if x.shape[0] != pixels.shape[0] and x.shape[1] == pixels.shape[0]:
            x = x.transpose(0, 1)  # sequence-first towers
        return self.patch_tokens(x).float()

    def pooling_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the pooling head reads, from the library's own forward: ViTs the last residual
        stream [B, T, D]; ResNets the last feature map [B, C, H, W]."""
        return self.hidden_full(pixels, self.n_blocks)

    def hidden_full(self, pixels: torch.Tensor, layer: int) -> torch.Tensor:
        """Hidden state ``layer`` as the library computes it, every token (or the feature map)."""
        blocks = self.modules
        idx = resolve_layer(int(layer), len(blocks))
        box = {}

        def hook(_mod, _args, out):
            box["x"] = _first(out)
            raise _Captured(box["x"])

        handle = blocks[idx - 1].register_forward_hook(hook)
        try:
            self.run(pixels)
        except _Captured:
            pass
        finally:
            handle.remove()
        return box["x"]


class _OpenClipTower(VisionTower):
    def __init__(self, model):
        super().__init__(model)
        self.module = model.model.visual


class OpenClipViT(_OpenClipTower):
    """open_clip ``VisionTransformer`` (real and toy ViTs)."""

    @property
    def modules(self):
        return list(self.module.transformer.resblocks)

    @property
    def pooling(self) -> str:
        v = self.module
        return "cls" if v.attn_pool is None and v.pool_type == "tok" else "unknown"

    def _check(self) -> None:
        v = self.module
        if v.attn_pool is not None:
            raise NotImplementedError(f"{self.spec}: attentional_pool towers are not decomposed")
        if v.pool_type != "tok":
            raise NotImplementedError(
                f"{self.spec}: pool_type={v.pool_type!r}; only class-token pooling ('tok') is "
                "decomposed")
        if v.training and not isinstance(v.patch_dropout, torch.nn.Identity):
            raise NotImplementedError(f"{self.spec}: patch dropout is active (call .eval())")

    def blocks(self):
        from open_clip.transformer import ResidualAttentionBlock

        self._check()
        out = []
        for i, block in enumerate(self.modules):
            if type(block) is not ResidualAttentionBlock:
                raise NotImplementedError(
                    f"block {i} is a {type(block).__name__}; only open_clip's "
                    "ResidualAttentionBlock (nn.MultiheadAttention, no qk-norm / scaled-cosine "
                    "attention / head scaling) is decomposed")
            if hasattr(block, "ln_1_kv"):
                raise NotImplementedError(f"block {i}: cross-attention blocks are not decomposed")
            wq, bq, wk, bk, wv, bv, wo, bo, heads, scale = mha_weights(block.attn, f"block {i}")
            out.append(AttentionBlock(
                ln1=block.ln_1, ln2=block.ln_2, mlp=block.mlp, wq=wq, bq=bq, wk=wk, bk=bk,
                wv=wv, bv=bv, wo=wo, bo=bo, heads=heads, scale=scale,
                ls1=layer_scale(block.ls_1), ls2=layer_scale(block.ls_2),
                wqkv=block.attn.in_proj_weight, bqkv=block.attn.in_proj_bias,
                **_mlp_parts(block.mlp, "c_fc", "gelu", "c_proj")))
        return out

    def patch_size(self) -> int:
        ps = self.module.patch_size
        ps = ps if isinstance(ps, (tuple, list)) else (ps, ps)
        if ps[0] != ps[1]:
            raise ValueError(f"{self.spec}: non-square patches {tuple(ps)}")
        return int(ps[0])

    def embed(self, pixels):
        self._check()
        return self.module._embeds(pixels.to(self.model.device, dtype=self.dtype)), None

    @property
    def final_norm(self):
        return self.module.ln_post

    def image_projection(self):
        return self.module.proj, None

    def pool(self, x, valid=None):
        # ln_post on the pooled token equals ln_post then pooling ('tok'): LN acts per token
        proj, _ = self.image_projection()
        y = self.final_norm(x[:, 0])
        return y if proj is None else y @ proj


class OpenClipResNet(_OpenClipTower):
    """open_clip ``ModifiedResNet`` (CLIP ResNets: four stages, then attention pooling)."""

    pooling = "attn_pool2d"

    @property
    def modules(self):
        return [getattr(self.module, f"layer{i}") for i in range(1, 5)]

    def attention_pool(self) -> AttentionPool:
        ap = self.module.attnpool
        dh = ap.q_proj.out_features // ap.num_heads
        return AttentionPool(
            query="mean", wq=ap.q_proj.weight, bq=ap.q_proj.bias, wk=ap.k_proj.weight,
            bk=ap.k_proj.bias, wv=ap.v_proj.weight, bv=ap.v_proj.bias, wo=ap.c_proj.weight,
            bo=ap.c_proj.bias, heads=int(ap.num_heads), scale=float(dh) ** -0.5,
            positional=ap.positional_embedding)

    def image_projection(self):
        ap = self.module.attnpool
        return ap.c_proj.weight.T, ap.c_proj.bias

    def pool_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention pool's input and pattern for a feature map ``x`` [B, C, H, W]:
        tokens ``t`` [B, 1 + HW, C] (the map's mean, then its HW positions, the positional
        embedding added to each) and ``a`` [B, heads, 1 + HW], each head's softmax attention
        of the mean token's query over them.  The pool's output is then
        ``sum_h Wo_h (Wv_h sum_p a_h(p) t(p) + bv_h) + bo``."""
        p = self.attention_pool()
        b, c = x.shape[:2]
        t = x.reshape(b, c, -1).transpose(1, 2)                       # [B, HW, C]
        t = torch.cat([t.mean(1, keepdim=True), t], 1) + p.positional.to(t.dtype)
        q = split_heads(F.linear(t[:, :1], p.wq, p.bq), p.heads)      # [B, H, 1, dh]
        k = split_heads(F.linear(t, p.wk, p.bk), p.heads)             # [B, H, T, dh]
        a = torch.softmax(p.scale * (q @ k.transpose(-1, -2)), dim=-1)[:, :, 0]
        return t, a

    def pool(self, x, valid=None):
        """The attention pool of a feature map ``x`` [B, C, H, W], from its weights."""
        p = self.attention_pool()
        t, a = self.pool_attention(x)
        v = split_heads(F.linear(t, p.wv, p.bv), p.heads)             # [B, H, T, dh]
        z = torch.einsum("bht,bhtk->bhk", a, v)                       # [B, H, dh]
        return F.linear(z.reshape(z.shape[0], -1), p.wo, p.bo)


class OpenClipTimm(_OpenClipTower):
    """open_clip towers built on timm (blocks for hooks only)."""

    @property
    def modules(self):
        trunk = getattr(self.module, "trunk", None)
        for attr in ("blocks", "stages"):
            if trunk is not None and hasattr(trunk, attr):
                return list(getattr(trunk, attr))
        raise TypeError(f"{self.spec}: no known block structure in {type(self.module).__name__}")


class HFViT(VisionTower):
    """transformers ``CLIPModel`` (class token, ``visual_projection``) and ``SiglipModel`` /
    ``Siglip2Model`` (attention-pooling head; SigLIP2 NaFlex with a patch mask)."""

    def __init__(self, model):
        super().__init__(model)
        self.module = model.model.vision_model
        self.arch = type(model.model).__name__

    @property
    def pooling(self) -> str:
        return "cls" if self.arch == "CLIPModel" else "attn_pool"

    @property
    def naflex(self) -> bool:
        return bool(getattr(self.model, "naflex", False))

    @property
    def modules(self):
        return list(self.module.encoder.layers)

    def blocks(self):
        out = []
        for i, layer in enumerate(self.modules):
            attn = getattr(layer, "self_attn", None)
            need = ("q_proj", "k_proj", "v_proj", "out_proj")
            if (attn is None or not all(hasattr(attn, n) for n in need)
                    or not hasattr(layer, "layer_norm1")):
                raise NotImplementedError(f"encoder layer {i} ({type(layer).__name__}) is not a "
                                          "CLIP/SigLIP pre-LN encoder layer")
            heads = int(getattr(attn, "num_heads", 0) or attn.config.num_attention_heads)
            scale = float(getattr(attn, "scale", (attn.q_proj.out_features // heads) ** -0.5))
            out.append(AttentionBlock(
                ln1=layer.layer_norm1, ln2=layer.layer_norm2, mlp=layer.mlp,
                wq=attn.q_proj.weight, bq=attn.q_proj.bias, wk=attn.k_proj.weight,
                bk=attn.k_proj.bias, wv=attn.v_proj.weight, bv=attn.v_proj.bias,
                wo=attn.out_proj.weight, bo=attn.out_proj.bias, heads=heads, scale=scale,
                **_mlp_parts(layer.mlp, "fc1", "activation_fn", "fc2")))
        return out

    def patch_size(self) -> int:
        return int(self.model.model.config.vision_config.patch_size)

    def run(self, pixels):
        pixels = pixels.to(self.model.device, dtype=self.model.model.dtype)
        if self.naflex:
            self.module(**self.model.naflex_inputs(pixels))
        else:
            self.module(pixel_values=pixels)

    def embed(self, pixels):
        vm = self.module
        pixels = pixels.to(self.model.device, dtype=self.dtype)
        if self.arch == "CLIPModel":
            return vm.pre_layrnorm(vm.embeddings(pixels)), None
        if self.naflex:
            inp = self.model.naflex_inputs(pixels)
            x0 = vm.embeddings(inp["pixel_values"].to(self.dtype), inp["spatial_shapes"])
            return x0, inp["pixel_attention_mask"].bool()
        return vm.embeddings(pixels), None

    def patch_tokens(self, x):
        if not self.naflex:
            return super().patch_tokens(x)
        gh, gw = self.grid()  # NaFlex keeps the real patches first, padding after
        return x[:, :gh * gw]

    @property
    def final_norm(self):
        return self.module.post_layernorm

    def image_projection(self):
        if self.arch != "CLIPModel":
            raise self._unsupported("image projection after a class token (SigLIP pools with "
                                    "attention_pool())")
        vp = self.model.model.visual_projection
        return vp.weight.T, vp.bias

    def attention_pool(self) -> AttentionPool:
        head = getattr(self.module, "head", None)
        if self.arch == "CLIPModel" or head is None or not getattr(self.module, "use_head", True):
            raise NotImplementedError(f"{self.spec}: SigLIP tower without the attention-pooling "
                                      "head")
        wq, bq, wk, bk, wv, bv, wo, bo, heads, scale = mha_weights(head.attention, "pool head")
        return AttentionPool(query="probe", wq=wq, bq=bq, wk=wk, bk=bk, wv=wv, bv=bv, wo=wo,
                             bo=bo, heads=heads, scale=scale, probe=head.probe.reshape(-1),
                             norm=head.layernorm, mlp=head.mlp)

    def pool(self, x, valid=None):
        y = self.final_norm(x)
        if self.arch == "CLIPModel":
            w, b = self.image_projection()
            return F.linear(y[:, 0], w.T, b)
        if valid is not None:
            return self.module.head(y, valid.int())
        return self.module.head(y)


def tower_of(model) -> VisionTower:
    """The :class:`VisionTower` of a ``ClipModel`` (the one dispatch on library and class)."""
    if model.library == "transformers":
        return HFViT(model)
    if model.library == "open_clip":
        visual = model.model.visual
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer

        if isinstance(visual, VisionTransformer):
            return OpenClipViT(model)
        if isinstance(visual, ModifiedResNet):
            return OpenClipResNet(model)
        return OpenClipTimm(model)
    raise TypeError(f"{model.spec}: unsupported library {model.library!r}")


def text_projection(model) -> torch.Tensor:
    """The text tower's projection as the model applies it, ``[D_text, D_out]`` (the live
    parameter, or a transposed view of a ``Linear``'s weight)."""
    m = model.model
    if model.library == "open_clip":
        tp = m.text_projection
        return tp.weight.T if isinstance(tp, torch.nn.Linear) else tp
    if type(m).__name__ == "CLIPModel":
        return m.text_projection.weight.T
    head = getattr(m.text_model, "head", None)
    if head is None:
        raise NotImplementedError(f"{model.spec}: no text projection found")
    return head.weight.T
