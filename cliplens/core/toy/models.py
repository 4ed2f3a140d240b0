"""Toy CLIP / SigLIP / SigLIP2 models, built with open_clip and transformers from a
:class:`~cliplens.core.settings.ToyModelSettings` and saved in their library's own format (loaded
back by ``load_model("toy:NAME")``).  Training is :mod:`cliplens.core.toy.training`.

=================  ==========================================  =============================
family             model                                        loss
=================  ==========================================  =============================
``clip``           open_clip ``CLIP`` (ViT or ModifiedResNet)   softmax contrastive
``siglip``         transformers ``SiglipModel``                 sigmoid
``siglip2``        transformers ``SiglipModel``                 sigmoid + lambda * L_img
=================  ==========================================  =============================

L_img is SigLIP2's image-side objective in toy form (:class:`PatchPixelObjective`): predict the
pixels of each patch from the vision tower's final patch tokens (``kind: pixel``) or of masked
patches (``kind: masked``).  The real ``google/siglip2-base-patch16-{224..512}`` checkpoints are
``SiglipModel``s, so the toy SigLIP2 is too; its ``family`` in ``cliplens_model.json`` is
``siglip2``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import ConfigError
from ..settings.toy import ToyConfigError, ToyModelSettings, check_toy_model  # noqa: F401
from .objectives import PatchPixelObjective, sigmoid_loss, softmax_contrastive_loss

#: open_clip's BPE vocabulary size (``SimpleTokenizer``)
OPEN_CLIP_VOCAB = 49408
#: image objective file saved beside a SigLIP2 toy model (not part of the transformers model)
IMAGE_OBJECTIVE_FILE = "image_objective.safetensors"
#: mean/std of the open_clip toys (open_clip's defaults, the OpenAI statistics)
OPEN_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPEN_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------------------------
# config


def toy_model_config(name: str, cfg) -> ToyModelSettings:
    """One model's settings: defaults filled, validated, cross-key constraints checked
    (:func:`check_toy_model`).  ``cfg``: a mapping (``toy_models.NAME`` of the config) or
    settings already.  Raises :class:`ToyConfigError` naming ``toy_models.NAME.key``."""
    if isinstance(cfg, ToyModelSettings):
        check_toy_model(cfg, f"toy_models.{name}")
        return cfg
    try:
        return ToyModelSettings.from_dict(cfg, where=f"toy_models.{name}")
    except ToyConfigError:
        raise
    except ConfigError as err:
        raise ToyConfigError(str(err)) from None


# ---------------------------------------------------------------------------------------------
# building


def open_clip_configs(cfg: ToyModelSettings) -> tuple[dict, dict]:
    """(``model_cfg``, ``preprocess_cfg``) of open_clip for a toy model.

    ViT: ``head_width = width / heads``, ``pos_embed_type = vision.pos_embed``.  ModifiedResNet:
    ``vision.layers`` are the four stage depths, ``vision.width`` the stem width and the
    attention pool has ``heads`` heads over ``32 * width`` channels (open_clip derives heads as
    ``32 * width / head_width``).
    """
    v, t, s = cfg.vision, cfg.text, int(cfg.image_size)
    if cfg.arch == "resnet":
        vision_cfg = {"image_size": s, "layers": [int(x) for x in v.layers],
                      "width": int(v.width), "head_width": int(v.width) * 32 // int(v.heads)}
    else:
        vision_cfg = {"image_size": s, "layers": int(v.layers), "width": int(v.width),
                      "head_width": int(v.width) // int(v.heads),
                      "patch_size": int(v.patch_size), "mlp_ratio": float(v.mlp_ratio),
                      "pos_embed_type": str(v.pos_embed)}
    text_cfg = {"context_length": int(t.context_length), "vocab_size": OPEN_CLIP_VOCAB,
                "width": int(t.width), "heads": int(t.heads), "layers": int(t.layers),
                "mlp_ratio": float(t.mlp_ratio)}
    model_cfg = {"embed_dim": int(cfg.embed_dim), "quick_gelu": False,
                 "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    preprocess_cfg = {"size": s, "mean": list(OPEN_CLIP_MEAN), "std": list(OPEN_CLIP_STD),
                      "interpolation": "bicubic", "resize_mode": "squash"}
    return model_cfg, preprocess_cfg


def siglip_config(cfg: ToyModelSettings, vocab_size: int, pad_id: int, eos_id: int):
    """A ``transformers.SiglipConfig`` for a toy model."""
    from transformers import SiglipConfig

    v, t = cfg.vision, cfg.text
    text_config = dict(
        vocab_size=int(vocab_size), hidden_size=int(t.width),
        intermediate_size=int(round(t.width * t.mlp_ratio)),
        num_hidden_layers=int(t.layers), num_attention_heads=int(t.heads),
        max_position_embeddings=int(t.context_length), projection_size=int(cfg.embed_dim),
        pad_token_id=int(pad_id), bos_token_id=None, eos_token_id=int(eos_id),
    )
    vision_config = dict(
        hidden_size=int(v.width), intermediate_size=int(round(v.width * v.mlp_ratio)),
        num_hidden_layers=int(v.layers), num_attention_heads=int(v.heads),
        image_size=int(cfg.image_size), patch_size=int(v.patch_size), num_channels=3,
    )
    return SiglipConfig(text_config=text_config, vision_config=vision_config)


class ToyModel:
    """A toy model being trained: the library module plus everything needed to feed it.

    Subclasses implement the library-specific parts; ``preprocess`` and ``tokenize`` are the
    loader's own (see :mod:`cliplens.core.models.registry`).
    """

    library: str
    model: torch.nn.Module
    image_objective: PatchPixelObjective | None = None

    def __init__(self, name: str, cfg: ToyModelSettings):
        self.name, self.cfg = name, cfg
        self.family = cfg.family

    # inputs
    def preprocess(self, images: np.ndarray, batch: int = 1000) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float [N, 3, S, S] through the loader's transform."""
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    # encoders (unnormalised embeddings [N, D])
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, pixels: torch.Tensor, tokens: torch.Tensor,
             generator: torch.Generator | None = None,
             match: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, its parts as floats); ``match`` (bool [N, N], caption j true of image i) only
        where the family supports partial captions (clip)."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimiser step (e.g. to clamp the temperature)."""

    def modules(self) -> list[torch.nn.Module]:
        return [self.model] + ([self.image_objective] if self.image_objective is not None else [])

    def parameters(self):
        for m in self.modules():
            yield from m.named_parameters(prefix=type(m).__name__)

    def train(self, mode: bool = True) -> "ToyModel":
        for m in self.modules():
            m.train(mode)
        return self

    def to(self, device) -> "ToyModel":
        for m in self.modules():
            m.to(device)
        return self

    def save(self, path: Path) -> None:
        raise NotImplementedError


class OpenClipToy(ToyModel):
    """An open_clip ``CLIP`` (ViT or ModifiedResNet) with open_clip's tokenizer and eval
    transform; softmax contrastive loss with the temperature clamped at 100 as open_clip does."""

    library = "open_clip"

    def __init__(self, name: str, cfg: ToyModelSettings):
        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2

        super().__init__(name, cfg)
        self.model_cfg, self.preprocess_cfg = open_clip_configs(cfg)
        self.model = open_clip.CLIP(**copy.deepcopy(self.model_cfg))
        self.transform = image_transform_v2(PreprocessCfg(**self.preprocess_cfg), is_train=False)
        self.tokenizer = open_clip.SimpleTokenizer(context_length=self.model_cfg["text_cfg"]["context_length"])

    def preprocess(self, images: np.ndarray, batch: int = 1000) -> torch.Tensor:
        return torch.stack([self.transform(Image.fromarray(im)) for im in images])

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    def loss(self, pixels, tokens, generator=None, match=None):
        img = F.normalize(self.encode_image(pixels), dim=-1)
        txt = F.normalize(self.encode_text(tokens), dim=-1)
        loss = softmax_contrastive_loss(img, txt, self.model.logit_scale.exp(), match)
        return loss, {"contrastive": float(loss.detach())}

    def after_step(self) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))

    def save(self, path: Path) -> None:
        from ..models.storage import save_open_clip_dir

        save_open_clip_dir(self.model, self.model_cfg, self.preprocess_cfg, path)


class SiglipToy(ToyModel):
    """A transformers ``SiglipModel`` with the toy word-level tokenizer and a
    ``SiglipImageProcessor`` (square resize, mean = std = 0.5); sigmoid loss with SigLIP's
    initial temperature t' = log 10 and bias b = -10; for family siglip2 plus
    ``image_objective.weight`` x L_img."""

    library = "transformers"

    def __init__(self, name: str, cfg: ToyModelSettings):
        from transformers import SiglipImageProcessor, SiglipModel

        from .tokenizer import EOS, PAD, build_toy_tokenizer

        super().__init__(name, cfg)
        ctx = int(cfg.text.context_length)
        self.tokenizer = build_toy_tokenizer(ctx)
        self.model = SiglipModel(siglip_config(
            cfg, len(self.tokenizer), self.tokenizer.convert_tokens_to_ids(PAD),
            self.tokenizer.convert_tokens_to_ids(EOS)))
        with torch.no_grad():
            self.model.logit_scale.fill_(math.log(10.0))
            self.model.logit_bias.fill_(-10.0)
        s = int(cfg.image_size)
        self.image_processor = SiglipImageProcessor(
            size={"height": s, "width": s}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        self.context_length = ctx
        obj = cfg.image_objective
        if obj.kind != "none":
            self.image_objective = PatchPixelObjective(
                int(cfg.vision.width), int(cfg.vision.patch_size), 3,
                kind=obj.kind, hidden=int(obj.hidden), mask_ratio=float(obj.mask_ratio))
            self.objective_weight = float(obj.weight)

    def preprocess(self, images: np.ndarray, batch: int = 1000) -> torch.Tensor:
        out = []
        for start in range(0, len(images), batch):
            pil = [Image.fromarray(im) for im in images[start:start + batch]]
            out.append(self.image_processor(images=pil, return_tensors="pt")["pixel_values"])
        return torch.cat(out)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts), padding="max_length", truncation=True,
                              max_length=self.context_length, return_tensors="pt")["input_ids"]

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=pixels).pooler_output

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.text_model(input_ids=tokens).pooler_output

    def loss(self, pixels, tokens, generator=None, match=None):
        if match is not None:
            raise ValueError(f"{self.name}: partial captions (match) are a clip-family option")
        vout = self.model.vision_model(pixel_values=pixels)
        img = F.normalize(vout.pooler_output, dim=-1)
        txt = F.normalize(self.encode_text(tokens), dim=-1)
        loss = sigmoid_loss(img, txt, self.model.logit_scale.exp(), self.model.logit_bias)
        parts = {"sigmoid": float(loss.detach())}
        if self.image_objective is not None:
            l_img = self.image_objective(self.model.vision_model, pixels,
                                         vout.last_hidden_state, generator)
            parts["image"] = float(l_img.detach())
            loss = loss + self.objective_weight * l_img
        return loss, parts

    def save(self, path: Path) -> None:
        from ..models.storage import save_transformers_dir

        save_transformers_dir(self.model, self.image_processor, self.tokenizer, path)
        if self.image_objective is not None:
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in self.image_objective.state_dict().items()}
            save_file(state, str(path / IMAGE_OBJECTIVE_FILE))


def build_toy_model(name: str, cfg) -> ToyModel:
    """Build (randomly initialised, from the torch RNG's current state) the toy model ``name``
    from its settings (a mapping is validated first, see :func:`toy_model_config`)."""
    cfg = toy_model_config(name, cfg)
    return OpenClipToy(name, cfg) if cfg.library == "open_clip" else SiglipToy(name, cfg)
