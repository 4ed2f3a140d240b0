"""Tiny toy-model configs and toy-world splits shared by the toy model tests."""

from __future__ import annotations

from cliplens.core.toy import world

_TINY_VIT = {"width": 32, "layers": 1, "heads": 2, "patch_size": 8}
_TINY_TEXT = {"width": 32, "layers": 1, "heads": 2, "context_length": 24}
TINY_TRAIN = {"steps": 5, "batch_size": 32, "lr": 0.003, "warmup": 0.2, "seed": 0}

#: one tiny config (``toy_models.NAME`` as written in config.yaml) per kind of toy model
TINY = {
    "clip-vit": {"library": "open_clip", "family": "clip", "arch": "vit", "image_size": 16,
                 "embed_dim": 32, "vision": _TINY_VIT, "text": _TINY_TEXT, "train": TINY_TRAIN},
    "clip-vit-sincos": {"library": "open_clip", "family": "clip", "arch": "vit", "image_size": 16,
                        "embed_dim": 32, "vision": dict(_TINY_VIT, patch_size=4, pos_embed="sin_cos_2d"),
                        "text": _TINY_TEXT, "train": TINY_TRAIN},
    "clip-rn": {"library": "open_clip", "family": "clip", "arch": "resnet", "image_size": 32,
                "embed_dim": 32, "vision": {"width": 8, "layers": [1, 1, 1, 1], "heads": 2},
                "text": _TINY_TEXT, "train": TINY_TRAIN},
    "siglip": {"library": "transformers", "family": "siglip", "image_size": 16, "embed_dim": 32,
               "vision": _TINY_VIT, "text": _TINY_TEXT, "train": TINY_TRAIN},
    "siglip2": {"library": "transformers", "family": "siglip2", "image_size": 16,
                "embed_dim": 32, "vision": _TINY_VIT, "text": _TINY_TEXT, "train": TINY_TRAIN,
                "image_objective": {"kind": "pixel", "weight": 1.0}},
    "siglip2-masked": {"library": "transformers", "family": "siglip2", "image_size": 16,
                       "embed_dim": 32, "vision": _TINY_VIT, "text": _TINY_TEXT,
                       "train": TINY_TRAIN,
                       "image_objective": {"kind": "masked", "weight": 1.0, "hidden": 16}},
}


def toy_splits(toy_cfg) -> dict:
    """The train (200) and val (60) splits of the default toy world, as dicts of arrays."""
    cfg = toy_cfg.replace(splits={"train": 200, "val": 60, "test": 1})
    out = world.generate("toy", cfg, splits=("train", "val"))
    return {
        name: {"images": s.images, "labels": s.labels, "captions_rich": s.captions_rich,
               "captions_poor": s.captions_poor}
        for name, s in out.items()
    }
