"""LaCLIP checkpoints (Fan et al., "Improving CLIP Training with Language Rewrites", NeurIPS 2023)
read into open_clip's ``CLIP``, so that they run through the same code as every other model.

The CC3M / CC12M / RedCaps checkpoints of https://github.com/LijieFan/LaCLIP ("Pre-trained
models": ``cc3m_laclip.pt``, ``cc3m_clip.pt``, ...) hold ``{"state_dict": ...}`` (keys possibly
prefixed ``module.``) of LaCLIP's own ``CLIP``: a timm ViT image tower (class token, no norm before
the blocks, LayerNorm eps 1e-6 everywhere, exact GELU, qkv bias, optionally a LayerNorm(head_dim,
eps 1e-6) on each head's queries and keys), ``image_projection`` after it, and OpenAI CLIP's text
transformer (QuickGELU, causal mask, EOT pooling, LayerNorm eps 1e-5). :func:`laclip_config` reads
the sizes from the tensors, :func:`laclip_to_open_clip` renames (and reshapes) the weights,
:func:`load_laclip` builds the model. Their LAION-400M checkpoints are open_clip checkpoints
already and are not read here.

Preprocessing as LaCLIP trained and evaluated it (``train.py``, ``eval_zeroshot_imagenet.py``):
Resize(S) with torchvision's default bilinear interpolation, CenterCrop(S), **ImageNet**
mean/std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225), not OpenAI's, built with open_clip's
``image_transform``. Text: OpenAI's BPE tokenizer, 77 tokens
(``open_clip.get_tokenizer("ViT-B-16")``, bundled).
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["build_laclip_model", "laclip_config", "laclip_to_open_clip", "load_laclip",
           "read_laclip_state"]

_VISION_BLOCK = re.compile(r"^visual\.blocks\.(\d+)\.(.+)$")
_TEXT_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_WB = ("weight", "bias")
#: a LaCLIP ViT block's parameters -> open_clip's (the same names for open_clip's default
#: ``ResidualAttentionBlock`` with ``nn.MultiheadAttention`` and its qk-norm
#: ``CustomResidualAttentionBlock`` with ``Attention``); q_norm / k_norm only when present
_VISION_RENAME = {
    **{f"norm1.{p}": f"ln_1.{p}" for p in _WB},
    "attn.qkv.weight": "attn.in_proj_weight", "attn.qkv.bias": "attn.in_proj_bias",
    **{f"attn.q_norm.{p}": f"attn.ln_q.{p}" for p in _WB},
    **{f"attn.k_norm.{p}": f"attn.ln_k.{p}" for p in _WB},
    **{f"attn.proj.{p}": f"attn.out_proj.{p}" for p in _WB},
    **{f"norm2.{p}": f"ln_2.{p}" for p in _WB},
    **{f"mlp.fc1.{p}": f"mlp.c_fc.{p}" for p in _WB},
    **{f"mlp.fc2.{p}": f"mlp.c_proj.{p}" for p in _WB},
}
_QK = tuple(k for k in _VISION_RENAME if "_norm." in k)
_TEXT_BLOCK_KEYS = ("attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                    "attn.out_proj.bias", *(f"{m}.{p}" for m in ("ln_1", "mlp.c_fc", "mlp.c_proj",
                                                                   "ln_2") for p in _WB))
_VISION_TOP = ("visual.cls_token", "visual.pos_embed", "visual.patch_embed.proj.weight",
               "visual.patch_embed.proj.bias", "visual.norm.weight", "visual.norm.bias")
_OTHER_TOP = ("image_projection", "text_projection", "logit_scale", "token_embedding.weight",
              "positional_embedding", "ln_final.weight", "ln_final.bias")


def _plain(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with the ``module.`` prefix (DistributedDataParallel) removed from its keys."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def _need(state: Mapping[str, Any], key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"not a LaCLIP checkpoint: key {key!r} is missing")
    return state[key]


def _layers(state: Mapping[str, Any], pattern: re.Pattern, what: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if not idx or idx != set(range(len(idx))):
        raise ValueError(f"not a LaCLIP checkpoint: {what} block indices {sorted(idx)} are not "
                         f"0..L-1")
    return len(idx)


def laclip_config(state: Mapping[str, Any]) -> dict[str, Any]:
    """open_clip ``CLIP(**cfg)`` keyword arguments for a LaCLIP state dict, every size read from
    the tensors: ``{"embed_dim": E, "quick_gelu": False, "vision_cfg": {image_size: P*G,
    patch_size: P, width: D, layers, head_width, mlp_ratio, no_ln_pre: True, qk_norm,
    norm_kwargs: {eps: 1e-6}}, "text_cfg": {context_length, vocab_size, width: W, heads: W/64,
    layers, mlp_ratio}}``. ``visual.pos_embed`` [1, 1+G*G, D] gives the grid G (square, else
    ValueError), ``visual.patch_embed.proj.weight`` [D, 3, P, P] the patch, ``q_norm`` [head_dim]
    the heads (D/64 without it), ``image_projection`` [D, E]. The text tower's QuickGELU is not a
    config setting (:func:`build_laclip_model` puts it in). A key missing or left over (against
    the keys these sizes imply) is a ValueError naming them."""
    s = _plain(state)
    if "visual.conv1.weight" in s:
        raise ValueError("an open_clip checkpoint (LaCLIP's LAION-400M models), not the "
                         "timm-ViT LaCLIP layout this scheme reads; use open_clip directly")
    patch_w = _need(s, "visual.patch_embed.proj.weight")
    width, chans, p, p2 = patch_w.shape
    tokens = _need(s, "visual.pos_embed").shape[-2]
    grid = round((tokens - 1) ** 0.5)
    if chans != 3 or p != p2 or grid * grid != tokens - 1:
        raise ValueError(f"not a square RGB patch grid: patch_embed.proj.weight "
                         f"{tuple(patch_w.shape)}, pos_embed with {tokens} tokens")
    v_layers = _layers(s, _VISION_BLOCK, "visual")
    qk_norm = "visual.blocks.0.attn.q_norm.weight" in s
    head_width = int(s["visual.blocks.0.attn.q_norm.weight"].shape[0]) if qk_norm else 64
    text_w = _need(s, "token_embedding.weight")
    t_width = int(text_w.shape[1])
    t_layers = _layers(s, _TEXT_BLOCK, "text")
    expected = set(_VISION_TOP + _OTHER_TOP)
    vis_keys = [k for k in _VISION_RENAME if qk_norm or k not in _QK]
    expected |= {f"visual.blocks.{i}.{k}" for i in range(v_layers) for k in vis_keys}
    expected |= {f"transformer.resblocks.{i}.{k}"
                 for i in range(t_layers) for k in _TEXT_BLOCK_KEYS}
    missing, extra = sorted(expected - set(s)), sorted(set(s) - expected)
    if missing or extra:
        raise ValueError(f"not the LaCLIP layout: missing keys {missing}, unexpected keys {extra}")
    if width % head_width or t_width % 64:
        raise ValueError(f"widths {width} / {t_width} are not multiples of the head width")
    return {
        "embed_dim": int(_need(s, "image_projection").shape[1]),
        "quick_gelu": False,
        "vision_cfg": {
            "image_size": int(p * grid), "patch_size": int(p), "width": int(width),
            "layers": v_layers, "head_width": head_width,
            "mlp_ratio": s["visual.blocks.0.mlp.fc1.weight"].shape[0] / width,
            "no_ln_pre": True, "qk_norm": qk_norm, "norm_kwargs": {"eps": 1e-6},
        },
        "text_cfg": {
            "context_length": int(s["positional_embedding"].shape[0]),
            "vocab_size": int(text_w.shape[0]), "width": t_width, "heads": t_width // 64,
            "layers": t_layers,
            "mlp_ratio": s["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / t_width,
        },
    }


def laclip_to_open_clip(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A LaCLIP state dict (validated by :func:`laclip_config`) as open_clip ``CLIP`` weights:

    * ``visual.patch_embed.proj.weight`` [D, 3, P, P] -> ``visual.conv1.weight``; open_clip's
      conv1 has no bias, so the patch bias [D] is folded into the positional embedding of the
      patch tokens (exact: both are added to each patch token before block 0);
    * ``visual.cls_token`` [1, 1, D] -> ``visual.class_embedding`` [D]; ``visual.pos_embed``
      [1, T, D] -> ``visual.positional_embedding`` [T, D] (rows 1.. plus the patch bias);
    * ``visual.blocks.{i}.X`` -> ``visual.transformer.resblocks.{i}.Y``: norm1/norm2 -> ln_1/ln_2,
      attn.qkv -> attn.in_proj_weight / in_proj_bias [3D, D] / [3D], attn.q_norm / k_norm ->
      attn.ln_q / ln_k [head_dim], attn.proj -> attn.out_proj, mlp.fc1 / fc2 -> mlp.c_fc / c_proj;
    * ``visual.norm`` -> ``visual.ln_post``; ``image_projection`` [D, E] -> ``visual.proj``;
    * text tower, ``text_projection`` [W, E] and ``logit_scale`` (log scale): unchanged names.
    """
    laclip_config(state)
    s = _plain(state)
    out: dict[str, torch.Tensor] = {}
    for key, value in s.items():
        if m := _VISION_BLOCK.match(key):
            out[f"visual.transformer.resblocks.{m.group(1)}.{_VISION_RENAME[m.group(2)]}"] = value
        elif not key.startswith("visual.") and key != "image_projection":
            out[key] = value
    pos = s["visual.pos_embed"].reshape(-1, s["visual.pos_embed"].shape[-1]).float().clone()
    pos[1:] += s["visual.patch_embed.proj.bias"].float()
    out.update({
        "visual.conv1.weight": s["visual.patch_embed.proj.weight"],
        "visual.class_embedding": s["visual.cls_token"].reshape(-1),
        "visual.positional_embedding": pos,
        "visual.ln_post.weight": s["visual.norm.weight"],
        "visual.ln_post.bias": s["visual.norm.bias"],
        "visual.proj": s["image_projection"],
    })
    return out


def build_laclip_model(cfg: Mapping[str, Any]) -> torch.nn.Module:
    """An open_clip ``CLIP`` of :func:`laclip_config`'s sizes: exact GELU and LayerNorm eps 1e-6
    (q/k norms included) in the image tower, QuickGELU in the text tower's MLPs."""
    from open_clip.model import CLIP
    from open_clip.transformer import QuickGELU

    model = CLIP(**cfg)
    for mod in model.visual.modules():
        if isinstance(mod, torch.nn.LayerNorm):
            mod.eps = 1e-6
    for block in model.transformer.resblocks:
        block.mlp.gelu = QuickGELU()
    return model


def read_laclip_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a LaCLIP ``.pt`` (``module.`` prefixes removed). Loaded with
    ``weights_only=True``; the ``argparse.Namespace`` of the training arguments that LaCLIP's
    training saves beside the weights is allowed, nothing else that runs code."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path}: holds objects other than tensors and plain values, which are not "
            f"unpickled here ({str(exc).splitlines()[0]}). If the file is trusted, keep only "
            f"the weights: torch.save({{'state_dict': torch.load(p, weights_only=False)"
            f"['state_dict']}}, p)") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a checkpoint with a 'state_dict' of tensors")
    return _plain(state)


def load_laclip(spec: str, path: str | Path):
    """:class:`~cliplens.core.models.open_clip_adapter.OpenClipModel` of the LaCLIP checkpoint
    at ``path`` (eval mode, CPU). A checkpoint not in the layout above is a ValueError naming
    ``path`` and the keys."""
    import open_clip
    from open_clip.constants import IMAGENET_MEAN, IMAGENET_STD
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.transform import image_transform

    from .open_clip_adapter import OpenClipModel
    from .storage import sha256_file

    path = Path(path)
    state = read_laclip_state(path)
    try:
        cfg = laclip_config(state)
        weights = laclip_to_open_clip(state)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    model = build_laclip_model(cfg)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the weights do not fit the model built from them: "
                         f"{exc}") from None
    size = cfg["vision_cfg"]["image_size"]
    pp = {"size": size, "mode": "RGB", "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
          "interpolation": "bilinear", "resize_mode": "shortest", "fill_color": 0}
    set_model_preprocess_cfg(model, pp)
    transform = image_transform(size, is_train=False, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                resize_mode="shortest", interpolation="bilinear")
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    ctx_len = cfg["text_cfg"]["context_length"]
    if getattr(tokenizer, "context_length", ctx_len) != ctx_len:
        raise ValueError(f"{path}: a text context of {ctx_len} tokens; the OpenAI tokenizer "
                         f"writes {tokenizer.context_length}")
    return OpenClipModel(
        spec, model, transform, tokenizer, family="clip", embed_dim=cfg["embed_dim"],
        extra_provenance={"weights_sha256": sha256_file(path), "laclip_file": path.name},
    )
