""":class:`~cliplens.core.models.base.ClipModel` over a transformers model (real or toy).

Supports ``CLIPModel`` (family ``clip``), ``SiglipModel`` (``siglip``; this includes the
fixed-resolution ``google/siglip2-base-patch16-{224,256,384,512}`` checkpoints, whose config is
``model_type: siglip``) and ``Siglip2Model`` (``siglip2``, NaFlex).

NaFlex (``Siglip2Model``): its image processor yields ``pixel_values`` [B, P, 3*p*p],
``pixel_attention_mask`` [B, P] and ``spatial_shapes`` [B, 2]. cliplens keeps one pixel layout for
every model, [N, 3, S, S]: :meth:`HFClipModel.preprocess` runs the processor and folds its patches
back into images (a pure reshape), and :meth:`HFClipModel.encode_image` cuts them into patches again
in the processor's order, padded to ``max_num_patches`` with a zero mask as the processor pads.
A square image at a fixed ``max_num_patches`` always gets the same grid, so ``S`` is fixed;
non-square images are first squashed to S x S (with the processor's resampling filter).

Grad mode is left to the caller (wrap pure inference in ``torch.inference_mode()``): training and
pixel-space optimisation need gradients through ``encode_image``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image

from .base import ClipModel

#: transformers model class name -> cliplens family
FAMILIES = {"CLIPModel": "clip", "SiglipModel": "siglip", "Siglip2Model": "siglip2"}

_PROCESSOR_KEYS = (
    "do_resize", "resample", "do_center_crop", "crop_size", "do_rescale",
    "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb",
    "patch_size", "max_num_patches",
)


def _plain(value: Any) -> Any:
    """JSON-friendly copy of an image-processor setting (enums -> int/str, tuples -> lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "value"):  # enums such as PILImageResampling
        return _plain(value.value)
    return str(value)


class HFClipModel(ClipModel):
    """A transformers dual encoder with its own image processor and tokenizer."""

    library = "transformers"

    def __init__(
        self,
        spec: str,
        model: torch.nn.Module,
        image_processor: Any,
        tokenizer: Any,
        *,
        family: str | None = None,
        extra_provenance: dict[str, Any] | None = None,
        text_batch_size: int = 256,
    ):
        arch = type(model).__name__
        if arch not in FAMILIES:
            raise TypeError(
                f"{spec}: unsupported transformers model class {arch} "
                f"(supported: {', '.join(FAMILIES)})"
            )
        self.spec = spec
        self.model = model.eval()
        self.arch = arch
        self.family = family or FAMILIES[arch]
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.text_batch_size = int(text_batch_size)
        self._extra = dict(extra_provenance or {})
        cfg = model.config
        if arch == "CLIPModel":
            self.embed_dim = int(cfg.projection_dim)
        else:
            self.embed_dim = int(cfg.vision_config.hidden_size)
        self.max_text_length = int(cfg.text_config.max_position_embeddings)
        if self.naflex:
            self.patch_size = int(image_processor.patch_size)
            self.max_num_patches = int(image_processor.max_num_patches)
            probe = Image.new("RGB", (4 * self.patch_size, 4 * self.patch_size))
            shape = image_processor(images=[probe], return_tensors="pt")["spatial_shapes"][0]
            if int(shape[0]) != int(shape[1]):
                raise ValueError(f"{spec}: processor maps a square image to a {shape.tolist()} grid")
            self.image_size = int(shape[0]) * self.patch_size
        else:
            self.image_size = int(cfg.vision_config.image_size)

    @property
    def naflex(self) -> bool:
        return self.arch == "Siglip2Model"

    # -- images ---------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The image processor's own transform -> [N, 3, S, S] (NaFlex patches folded back)."""
        images = list(images)
        if not self.naflex:
            return self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        s = self.image_size
        resample = getattr(self.image_processor, "resample", Image.BILINEAR)
        resample = getattr(resample, "value", resample)
        images = [im if im.size[0] == im.size[1] else im.resize((s, s), resample=resample)
                  for im in images]
        out = self.image_processor(images=images, return_tensors="pt")
        side = s // self.patch_size
        if not bool((out["spatial_shapes"] == side).all()):
            raise ValueError(f"{self.spec}: processor grids {out['spatial_shapes'].tolist()} != {side}")
        return self.unpatchify(out["pixel_values"][:, : side * side], side, side)

    def patchify(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, (H/p)(W/p), p*p*C] in the Siglip2 processor's order
        (row-major patch grid; inside a patch row-major pixels, channels last)."""
        n, c, h, w = pixels.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"{self.spec}: image {h}x{w} is not a multiple of patch size {p}")
        x = pixels.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, patches: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        """Inverse of :meth:`patchify` for a ``gh`` x ``gw`` grid."""
        n, _, d = patches.shape
        p = self.patch_size
        c = d // (p * p)
        x = patches.reshape(n, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, c, gh * p, gw * p)

    def naflex_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """[N, 3, H, W] -> ``pixel_values``, ``pixel_attention_mask``, ``spatial_shapes`` as the
        Siglip2 processor builds them (padded to ``max_num_patches``)."""
        n, _, h, w = pixels.shape
        p = self.patch_size
        patches = self.patchify(pixels)
        num = patches.shape[1]
        if num > self.max_num_patches:
            raise ValueError(
                f"{self.spec}: {h}x{w} gives {num} patches > max_num_patches={self.max_num_patches}"
            )
        mask = torch.zeros(n, self.max_num_patches, dtype=torch.int32, device=pixels.device)
        mask[:, :num] = 1
        patches = torch.nn.functional.pad(patches, (0, 0, 0, self.max_num_patches - num))
        shapes = torch.tensor([[h // p, w // p]] * n, dtype=torch.long, device=pixels.device)
        return {"pixel_values": patches, "pixel_attention_mask": mask, "spatial_shapes": shapes}

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Pooled, projected image embedding: CLIP's ``visual_projection`` of the pooled token,
        SigLIP's attention-pooling head output (``get_image_features(...).pooler_output``)."""
        pixels = pixels.to(self.device, dtype=self.model.dtype)
        if self.naflex:
            out = self.model.get_image_features(**self.naflex_inputs(pixels))
        else:
            out = self.model.get_image_features(pixel_values=pixels)
        emb = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb

    # -- text -----------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Model inputs for ``texts`` as each family was trained.

        CLIP: pad to the longest text (the causal text tower pools at the EOS token), with
        ``attention_mask``. SigLIP / SigLIP2: ``padding="max_length"`` to the text tower's length
        (64 for the released checkpoints) and ``input_ids`` only: big_vision trained the text
        tower without a padding mask and pools the last position.
        """
        if self.arch == "CLIPModel":
            enc = self.tokenizer(list(texts), padding=True, truncation=True,
                                 max_length=self.max_text_length, return_tensors="pt")
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=self.max_text_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"]}

    def encode_text(self, texts: Sequence[str], normalize: bool = False) -> torch.Tensor:
        texts = list(texts)
        out = []
        for start in range(0, len(texts), self.text_batch_size):
            inputs = self.tokenize(texts[start : start + self.text_batch_size])
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            res = self.model.get_text_features(**inputs)
            out.append(res.pooler_output if hasattr(res, "pooler_output") else res)
        if not out:
            return torch.empty(0, self.embed_dim, device=self.device)
        emb = torch.cat(out)
        return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb

    def provenance(self) -> dict[str, Any]:
        proc = self.image_processor
        prov = super().provenance()
        pre = {k: _plain(getattr(proc, k)) for k in _PROCESSOR_KEYS if hasattr(proc, k)}
        pre["processor"] = type(proc).__name__
        pre["size"] = self.image_size
        pre["mean"] = [float(x) for x in getattr(proc, "image_mean", ()) or ()]
        pre["std"] = [float(x) for x in getattr(proc, "image_std", ()) or ()]
        pre["resize_mode"] = (
            "naflex-square" if self.naflex
            else "shortest+center_crop" if getattr(proc, "do_center_crop", False)
            else "squash"
        )
        pre["processor_size"] = _plain(getattr(proc, "size", None))
        prov["preprocess"] = pre
        prov["architecture"] = self.arch
        prov.update(self._extra)
        return prov
