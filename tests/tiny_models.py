"""Tiny models with random weights, built offline through the real libraries, and the inputs tests
feed them: every architecture the towers know (open_clip ViT and ModifiedResNet, transformers
CLIP, SigLIP and SigLIP2 NaFlex) in a few hundred thousand parameters."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from cliplens.core.data.base import ImageDataset
from cliplens.core.models.hf_adapter import HFClipModel
from cliplens.core.models.open_clip_adapter import OpenClipModel

TINY_VIT = dict(image_size=32, layers=3, width=32, head_width=8, patch_size=8)
TINY_RESNET = dict(image_size=64, layers=[1, 1, 1, 1], width=8, head_width=16)
TINY_SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=2, patch_size=8)
_TEXT = dict(context_length=8, vocab_size=100, width=32, heads=2, layers=1)


def open_clip_model(vision_cfg: dict = TINY_VIT, embed_dim: int = 16, seed: int = 0,
                    **kw) -> OpenClipModel:
    """An open_clip CLIP (ViT or, with a list of ``layers``, ModifiedResNet) with random
    weights and its eval transform (no tokenizer: tiny vocabularies take token ids)."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=embed_dim, vision_cfg=vision_cfg, text_cfg=_TEXT,
                           **kw).eval()
    tr = image_transform_v2(PreprocessCfg(size=vision_cfg["image_size"]), is_train=False)
    return OpenClipModel("open_clip:test", model, tr, None, family="clip", embed_dim=embed_dim)


def tiny_open_clip_vit() -> OpenClipModel:
    """A 3-block open_clip ViT (2 heads of width 16) as the cache tests use it."""
    return open_clip_model(dict(TINY_VIT, head_width=16))


def toy_vit() -> OpenClipModel:
    """The toy ``clip-vit`` architecture (schema defaults, random weights) via the toy path."""
    from cliplens.core.toy.models import build_toy_model

    torch.manual_seed(0)
    toy = build_toy_model("clip-vit", {"library": "open_clip", "family": "clip"})
    return OpenClipModel("toy:clip-vit", toy.model.eval(), toy.transform, toy.tokenizer,
                         family="clip", embed_dim=toy.model_cfg["embed_dim"])


def siglip(vision: dict | None = None, kind: str = "siglip") -> HFClipModel:
    """A transformers SiglipModel (``kind="siglip"``; ``vision`` needs ``image_size``) or NaFlex
    Siglip2Model (``"siglip2"``; ``num_patches``) with random weights."""
    import transformers as T

    if vision is None:
        vision = dict(TINY_SIGLIP, **({"image_size": 32} if kind == "siglip"
                                      else {"num_patches": 16}))
    torch.manual_seed(0)
    text = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=8, pad_token_id=0,
                bos_token_id=None, eos_token_id=1)
    if kind == "siglip":
        model = T.SiglipModel(T.SiglipConfig(text_config=text, vision_config=vision))
        s = model.config.vision_config.image_size
        proc = T.SiglipImageProcessor(size={"height": s, "width": s})
    else:
        model = T.Siglip2Model(T.Siglip2Config(text_config=text, vision_config=vision))
        proc = T.Siglip2ImageProcessor(patch_size=vision["patch_size"], max_num_patches=20)
    return HFClipModel(f"hf:test-{kind}", model.eval(), proc, None)


def tiny_siglip(layers: int = 3, image_size: int = 32, patch: int = 8) -> HFClipModel:
    """A SigLIP whose processor squashes to ``image_size`` with mean = std = 0.5 (SigLIP's)."""
    from transformers import SiglipImageProcessor

    m = siglip(dict(TINY_SIGLIP, num_hidden_layers=layers, image_size=image_size,
                    patch_size=patch))
    m.image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size},
                                             image_mean=[0.5] * 3, image_std=[0.5] * 3)
    m.spec = "hf:./tiny-siglip"
    return m


def hf_clip() -> HFClipModel:
    """A transformers CLIPModel (class token, ``visual_projection``)."""
    import transformers as T

    torch.manual_seed(0)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2)
    cfg = T.CLIPConfig(text_config=dict(common, vocab_size=64, max_position_embeddings=8,
                                        pad_token_id=0, bos_token_id=2, eos_token_id=1),
                       vision_config=dict(common, image_size=32, patch_size=8), projection_dim=24)
    proc = T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return HFClipModel("hf:test-clip", T.CLIPModel(cfg).eval(), proc, None)


def pixels(model, n: int, seed: int = 0) -> torch.Tensor:
    """Standard-normal pixels [n, 3, S, S] at the model's input size."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, model.image_size, model.image_size, generator=g)


def random_images(n: int, size: int = 40, seed: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 3] of uniform noise."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


class ArrayDataset(ImageDataset):
    """uint8 images [N, H, W, 3] as an :class:`ImageDataset` (labels 0, 1, 2 cycling)."""

    def __init__(self, images: np.ndarray, name: str = "arr", split: str = "test"):
        self.arr, self.name, self.split = images, name, split
        self.labels = np.arange(len(images)) % 3

    def __len__(self) -> int:
        return len(self.arr)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.arr[i])
