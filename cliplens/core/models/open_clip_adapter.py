""":class:`~cliplens.core.models.base.ClipModel` over an open_clip model (real or toy).

Built by :func:`cliplens.core.models.registry.load_model`; this module only wraps objects open_clip
has already created (model, eval transform, tokenizer) and never touches the network.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from PIL import Image

from .base import ClipModel


def _side(size: Any) -> int:
    """open_clip stores sizes as an int or an (H, W) pair; cliplens wants square inputs."""
    if isinstance(size, (tuple, list)):
        if len(set(int(s) for s in size)) != 1:
            raise ValueError(f"non-square input size {tuple(size)} is not supported")
        return int(size[0])
    return int(size)


class OpenClipModel(ClipModel):
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` with its eval transform and tokenizer.

    Grad mode is left to the caller: wrap pure inference in ``torch.inference_mode()``; training
    and pixel-space optimisation (feature inversion) need gradients through ``encode_image``.
    """

    library = "open_clip"

    def __init__(
        self,
        spec: str,
        model: torch.nn.Module,
        transform: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
        *,
        family: str,
        embed_dim: int,
        extra_provenance: dict[str, Any] | None = None,
        text_batch_size: int = 256,
    ):
        self.spec = spec
        self.model = model.eval()
        self.transform = transform
        self.tokenizer = tokenizer
        self.family = family
        self.embed_dim = int(embed_dim)
        self.preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        self.image_size = _side(self.preprocess_cfg.get("size", model.visual.image_size))
        self.text_batch_size = int(text_batch_size)
        self._extra = dict(extra_provenance or {})

    # -- images ---------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """open_clip's own eval transform (resize mode, crop, mean/std of the checkpoint)."""
        return torch.stack([self.transform(im) for im in images])

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        pixels = pixels.to(self.device, dtype=next(self.model.visual.parameters()).dtype)
        return self.model.encode_image(pixels, normalize=normalize)

    # -- text -----------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [N, context_length] from the model's own open_clip tokenizer."""
        return self.tokenizer(list(texts))

    def encode_text(self, texts: Sequence[str], normalize: bool = False) -> torch.Tensor:
        texts = list(texts)
        out = []
        for start in range(0, len(texts), self.text_batch_size):
            tokens = self.tokenize(texts[start : start + self.text_batch_size]).to(self.device)
            out.append(self.model.encode_text(tokens, normalize=normalize))
        if not out:
            return torch.empty(0, self.embed_dim, device=self.device)
        return torch.cat(out)

    def provenance(self) -> dict[str, Any]:
        cfg = self.preprocess_cfg
        prov = super().provenance()
        prov["preprocess"] = {
            "size": self.image_size,
            "mean": [float(x) for x in cfg.get("mean", ())],
            "std": [float(x) for x in cfg.get("std", ())],
            "resize_mode": str(cfg.get("resize_mode", "")),
            "interpolation": str(cfg.get("interpolation", "")),
            "mode": str(cfg.get("mode", "RGB")),
        }
        prov.update(self._extra)
        return prov
