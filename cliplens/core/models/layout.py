"""What is known of a vision tower's layout before any model is loaded (torch-free, so the
workflow can check a config while it plans): the layer indexing every study shares
(:func:`resolve_layer`, :func:`resolve_layers`), and the block and head counts of a model spec
(:func:`planned_layout`) from the toy model's settings or open_clip's packaged config JSON."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..specs import parse_model_spec


def resolve_layer(layer: int, n_blocks: int) -> int:
    """Hidden-state index ``layer`` (0 = block input, k = output of block k, negative from the
    end, as transformers' ``hidden_states``) -> 0 .. n_blocks."""
    idx = layer if layer >= 0 else n_blocks + 1 + layer
    if not 0 <= idx <= n_blocks:
        raise ValueError(f"layer {layer} is outside the {n_blocks + 1} hidden states "
                         f"(-{n_blocks + 1} .. {n_blocks}) of a {n_blocks}-block tower")
    return idx


def resolve_layers(layers: int | Sequence[int] | None, n_blocks: int) -> tuple[int, ...]:
    """``None`` -> all blocks; an int ``k`` -> the last ``k`` blocks; a sequence -> those 0-based
    block indices (negative counts from the end), sorted, without duplicates."""
    if layers is None:
        return tuple(range(n_blocks))
    if isinstance(layers, int):
        if not 0 <= layers <= n_blocks:
            raise ValueError(f"layers={layers}: a {n_blocks}-block tower has 0..{n_blocks} "
                             "last layers")
        return tuple(range(n_blocks - layers, n_blocks))
    out = set()
    for l in layers:
        idx = int(l) + n_blocks if int(l) < 0 else int(l)
        if not 0 <= idx < n_blocks:
            raise ValueError(f"layer {l} is outside the {n_blocks} blocks of this tower")
        out.add(idx)
    return tuple(sorted(out))



@dataclass(frozen=True)
class TowerLayout:
    """A vision tower's transformer blocks and attention heads per block (ViTs)."""

    blocks: int
    heads: int


@lru_cache(maxsize=1)
def _open_clip_config_dir() -> Path | None:
    spec = importlib.util.find_spec("open_clip")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model_configs"


def open_clip_archs() -> list[str]:
    """The architecture names open_clip ships a config for (its ``model_configs/*.json``)."""
    folder = _open_clip_config_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder else []


@lru_cache(maxsize=None)
def open_clip_model_config(arch: str) -> dict[str, Any] | None:
    """open_clip's packaged config of ``arch`` (None if it ships none)."""
    folder = _open_clip_config_dir()
    path = folder / f"{arch}.json" if folder else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())


def planned_layout(spec: str, toy_models: Mapping[str, Any]) -> TowerLayout | None:
    """Blocks and heads of model ``spec``'s vision tower if a ViT whose layout is known before
    loading: a ``toy:`` model from its settings (``toy_models[name]``), an ``open_clip:`` one
    from its packaged config; None otherwise (hub and local models, ResNets)."""
    parsed = parse_model_spec(spec)
    if parsed.scheme == "toy":
        cfg = toy_models.get(parsed.name)
        if cfg is None or getattr(cfg, "arch", "vit") != "vit":
            return None
        return TowerLayout(int(cfg.vision.layers), int(cfg.vision.heads))
    if parsed.scheme == "open_clip":
        vision = (open_clip_model_config(parsed.name) or {}).get("vision_cfg", {})
        if not isinstance(vision.get("layers"), int) or "timm_model_name" in vision:
            return None
        width = int(vision.get("width", 768))
        return TowerLayout(int(vision["layers"]), width // int(vision.get("head_width", 64)))
    return None


def planned_tower(spec: str, toy_models: Mapping[str, Any]) -> tuple[str, int | None] | None:
    """(kind, embedding width) of model ``spec``'s vision tower when known before loading;
    kind is ``"vit"`` (class-token ViT), ``"resnet"`` (CLIP ModifiedResNet with attention
    pooling), ``"siglip"`` (attention-pooled ViT) or ``"timm"``.  None for hub and local models
    (the job checks those); a LaCLIP checkpoint is a ViT of a width known once it is read."""
    parsed = parse_model_spec(spec)
    if parsed.scheme == "toy":
        cfg = toy_models.get(parsed.name)
        if cfg is None:
            return None
        if getattr(cfg, "library", "open_clip") == "transformers":
            return ("vit" if getattr(cfg, "family", "") == "clip" else "siglip"), int(cfg.embed_dim)
        return ("resnet" if getattr(cfg, "arch", "vit") == "resnet" else "vit"), int(cfg.embed_dim)
    if parsed.scheme == "open_clip":
        mc = open_clip_model_config(parsed.name)
        if mc is None:
            return None
        vision = mc.get("vision_cfg", {})
        width = mc.get("embed_dim")
        if "timm_model_name" in vision:
            return "timm", width
        if isinstance(vision.get("layers"), (list, tuple)):
            return "resnet", width
        if vision.get("attentional_pool") or vision.get("pool_type", "tok") != "tok":
            return "other", width
        return "vit", width
    if parsed.scheme == "laclip":  # every LaCLIP checkpoint is a class-token ViT
        return "vit", None
    return None
