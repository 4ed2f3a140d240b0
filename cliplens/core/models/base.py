"""The interface every loaded model offers, whatever library it comes from.

Caches, zero-shot evaluation and every study talk to a :class:`ClipModel`; open_clip and
transformers models (real or toy) are wrapped by adapters (:mod:`.open_clip_adapter`,
:mod:`.hf_adapter`) built by :mod:`cliplens.core.models.registry`.  The vision tower's internals
are reached through :attr:`ClipModel.tower` (:mod:`cliplens.core.models.towers`), never by
branching on the library.
"""

from __future__ import annotations

import abc
from typing import Any, Sequence

import torch
from PIL import Image


class ModelUnavailableError(RuntimeError):
    """A model's weights are not on this machine (and cannot be downloaded)."""


class ClipModel(abc.ABC):
    """A CLIP-like dual encoder.

    Attributes
    ----------
    spec:
        The model spec string (``open_clip:ViT-B-16@laion2b_s34b_b88k``, ``hf:REPO``, ``toy:NAME``).
    library:
        ``"open_clip"`` or ``"transformers"``.
    family:
        ``"clip"``, ``"siglip"`` or ``"siglip2"``.
    model:
        The underlying library module (``open_clip.CLIP``, ``transformers.SiglipModel``, ...).
    image_size:
        Side of the square input the vision tower consumes.
    embed_dim:
        Dimension of the joint image/text embedding.
    """

    spec: str
    library: str
    family: str
    model: torch.nn.Module
    image_size: int
    embed_dim: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @abc.abstractmethod
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> the pixel tensor [N, 3, S, S] the vision tower consumes, built with
        the library's own transform (open_clip's preprocess, transformers' image processor)."""

    @abc.abstractmethod
    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Pixel tensor [N, 3, S, S] -> image embeddings [N, embed_dim]."""

    @abc.abstractmethod
    def encode_text(self, texts: Sequence[str], normalize: bool = False) -> torch.Tensor:
        """Strings -> text embeddings [N, embed_dim] (tokenised with the model's tokenizer)."""

    @property
    def tower(self):
        """The vision tower's internals (:class:`cliplens.core.models.towers.VisionTower`)."""
        if getattr(self, "_tower", None) is None:
            from .towers import tower_of

            self._tower = tower_of(self)
        return self._tower

    @property
    def vision_blocks(self) -> Sequence[torch.nn.Module]:
        """The vision tower's residual blocks in order (transformer blocks or ResNet stages)."""
        return self.tower.modules

    def logit_scale(self) -> float:
        """exp of the learned temperature (for contrastive logits)."""
        return float(self.model.logit_scale.detach().exp().reshape(-1)[0])

    def logit_bias(self) -> float | None:
        """SigLIP's additive logit bias b (logits = scale * cos + b); None for softmax CLIP."""
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias.detach().reshape(-1)[0])

    def provenance(self) -> dict[str, Any]:
        """What a cache built with this model records and later checks."""
        return {
            "model": self.spec,
            "library": self.library,
            "family": self.family,
            "image_size": int(self.image_size),
            "embed_dim": int(self.embed_dim),
        }

    def to(self, device: str | torch.device) -> "ClipModel":
        self.model.to(device)
        return self
