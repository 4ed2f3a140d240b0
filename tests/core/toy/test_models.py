"""Toy model settings and building: the default config names every toy model and validates,
inconsistent settings fail naming the key, and the sin-cos position embedding is an open_clip ViT
option that stays fixed while training."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cliplens.core.config import ConfigError, load_config, validate_config
from cliplens.core.settings import ToyModelSettings
from cliplens.core.toy import world
from cliplens.core.toy.models import (
    ToyConfigError,
    build_toy_model,
    open_clip_configs,
    toy_model_config,
)
from cliplens.core.toy.training import fit

from .tiny import TINY

ROOT = Path(__file__).resolve().parents[3]



# --- config ------------------------------------------------------------------------------------


def test_default_config_validates_and_names_every_toy_model():
    cfg = load_config(ROOT / "config.yaml")
    names = set(cfg["toy_models"])
    assert {"clip-vit", "clip-vit-poor", "clip-rn", "siglip-32", "siglip-64",
            "siglip2-32", "siglip2-64"} <= names
    for name, entry in cfg["toy_models"].items():
        settings = toy_model_config(name, entry)  # cross-key constraints hold
        assert isinstance(settings, ToyModelSettings)
    fams = {n: cfg["toy_models"][n]["family"] for n in names}
    assert fams["siglip2-32"] == "siglip2" and fams["clip-rn"] == "clip"


def test_config_typo_names_the_bad_key():
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw["toy_models"]["clip-vit"].setdefault("train", {})["stpes"] = 3
    with pytest.raises(ConfigError, match=r"toy_models\.clip-vit\.train.*stpes"):
        validate_config(raw)
    # one model's settings on their own name the same key
    with pytest.raises(ToyConfigError, match=r"toy_models\.clip-vit\.train.*stpes"):
        toy_model_config("clip-vit", raw["toy_models"]["clip-vit"])


@pytest.mark.parametrize("patch, match", [
    ({"family": "siglip2", "image_objective": {"kind": "none"}}, "image_objective.kind"),
    ({"image_objective": {"kind": "pixel"}}, "only family siglip2"),
    ({"embed_dim": 48}, "embed_dim"),
    ({"library": "open_clip"}, "family"),
    ({"vision": {"patch_size": 5}}, "patch_size"),
    ({"vision": {"pos_embed": "sin_cos_2d"}}, r"vision\.pos_embed.*open_clip ViT option"),
    ({"vision": {"pos_embed": "rope"}}, r"vision\.pos_embed"),
    ({"train": {"partial_captions": {"fraction": 0.5}}}, r"train\.partial_captions\.fraction.*clip-family"),
])
def test_inconsistent_toy_configs_fail_with_the_key(patch, match):
    cfg = copy.deepcopy(TINY["siglip"])
    for k, v in patch.items():
        cfg[k] = dict(cfg.get(k, {}), **v) if isinstance(v, dict) else v
    with pytest.raises(ToyConfigError, match=match):
        toy_model_config("x", cfg)


def test_sin_cos_pos_embed_is_an_open_clip_vit_option_only():
    cfg = toy_model_config("x", TINY["clip-vit-sincos"])
    model_cfg, _ = open_clip_configs(cfg)
    assert model_cfg["vision_cfg"]["pos_embed_type"] == "sin_cos_2d"
    assert open_clip_configs(toy_model_config("x", TINY["clip-vit"]))[0][
        "vision_cfg"]["pos_embed_type"] == "learnable"
    rn = copy.deepcopy(TINY["clip-rn"])
    rn["vision"] = dict(rn["vision"], pos_embed="sin_cos_2d")
    with pytest.raises(ToyConfigError, match=r"clip-rn\.vision\.pos_embed"):
        toy_model_config("clip-rn", rn)


def test_sin_cos_pos_embed_is_fixed_during_training():
    from open_clip.pos_embed import get_2d_sincos_pos_embed

    torch.manual_seed(0)
    toy = build_toy_model("s", TINY["clip-vit-sincos"])
    pe = toy.model.visual.positional_embedding
    expect = torch.from_numpy(get_2d_sincos_pos_embed(32, 4, cls_token=True)).float()
    assert not pe.requires_grad and torch.equal(pe.detach(), expect)
    assert all(p is not pe for _, p in toy.parameters() if p.requires_grad)
    rng = np.random.default_rng(0)
    split = world.draw_split(world.sample_labels(8, rng), rng)
    fit(toy, toy.preprocess(split.images), toy.tokenize(split.captions_rich),
        toy.cfg.train.replace(steps=3, batch_size=8), progress=False)
    assert torch.equal(toy.model.visual.positional_embedding.detach(), expect)
