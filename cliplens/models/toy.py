"""Toy CLIP / SigLIP / SigLIP2 models: built with open_clip and transformers, trained on the toy
world, saved in their library's own format (loaded back by ``load_model("toy:NAME")``).

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

Each model's config slice (``toy_models.NAME``, schema ``cliplens/schema/toy_models.schema.yaml``)
holds ``library``, ``family``, ``arch``, ``captions``, ``image_size``, ``embed_dim`` and the
``vision``, ``text``, ``train`` and ``image_objective`` sections.

Training applies the loader's own preprocessing (open_clip's eval transform, the transformers
image processor) once to the whole split, tokenises every caption as the loader does
(open_clip's tokenizer; the toy word-level tokenizer with ``padding="max_length"``), then runs
AdamW with linear warm-up and cosine decay over shuffled batches (``train.batching``: random,
or grouped hard-negative batches whose groups share chosen factors, see :class:`BatchSampler`).
With ``train.partial_captions`` (clip family, rich captions) part of each batch's captions are
swapped for partial ones naming only some factors ("a crimson item"), and the softmax
contrastive loss counts every caption true of an image as its positive (:func:`caption_match`):
CLIP's web captions rarely name everything, and one-factor zero-shot prompts need text
embeddings that mean one factor.  Otherwise the labels only pick the batches and never enter
the loss.  Everything is seeded: the same config, data and thread count give the same weights.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cliplens import toyworld
from cliplens.models.toy_objectives import (
    PatchPixelObjective,
    caption_match,
    sigmoid_loss,
    softmax_contrastive_loss,
)

log = logging.getLogger(__name__)

#: factors scored by zero-shot classification after training (metadata ``zeroshot``)
ZEROSHOT_FACTORS = ("colour", "shape", "position", "size", "background")
#: open_clip's BPE vocabulary size (``SimpleTokenizer``)
OPEN_CLIP_VOCAB = 49408
#: image objective file saved beside a SigLIP2 toy model (not part of the transformers model)
IMAGE_OBJECTIVE_FILE = "image_objective.safetensors"
#: mean/std of the open_clip toys (open_clip's defaults, the OpenAI statistics)
OPEN_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPEN_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ToyConfigError(ValueError):
    """A toy model's config slice is inconsistent; the message names the model and the key."""


# ---------------------------------------------------------------------------------------------
# config


def toy_model_schema() -> dict:
    """The JSON schema of one ``toy_models`` entry."""
    from cliplens.config import load_schema

    return load_schema()["properties"]["toy_models"]["additionalProperties"]


def toy_model_config(name: str, cfg: Mapping[str, Any]) -> dict:
    """Validate one model's config slice, fill its defaults, check cross-key constraints.

    Returns a new dict.  Raises :class:`ToyConfigError` naming ``toy_models.NAME.key``.
    """
    import jsonschema

    from cliplens.config import fill_defaults

    schema = toy_model_schema()
    out = fill_defaults(copy.deepcopy(dict(cfg)), schema)
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(out))
    if errors:
        lines = [f"toy_models.{name}.{'.'.join(map(str, e.absolute_path)) or '<entry>'}: "
                 f"{e.message}" for e in errors]
        raise ToyConfigError("\n".join(lines))

    def bad(key: str, msg: str) -> ToyConfigError:
        return ToyConfigError(f"toy_models.{name}.{key}: {msg}")

    lib, fam, v, t = out["library"], out["family"], out["vision"], out["text"]
    if (lib == "open_clip") != (fam == "clip"):
        raise bad("family", f"family {fam!r} does not go with library {lib!r} "
                  "(clip: open_clip; siglip, siglip2: transformers)")
    s = out["image_size"]
    if lib == "open_clip" and out["arch"] == "resnet":
        if not isinstance(v["layers"], list):
            raise bad("vision.layers", "arch resnet needs a list of 4 block counts, e.g. [1, 1, 1, 1]")
        if s % 32:
            raise bad("image_size", f"a ModifiedResNet needs a multiple of 32, got {s}")
        if (v["width"] * 32) % v["heads"]:
            raise bad("vision.heads", f"must divide the attention pool width 32*{v['width']}")
    else:
        if lib == "transformers" and out["arch"] != "vit":
            raise bad("arch", "transformers toys are ViTs (arch: vit)")
        if not isinstance(v["layers"], int):
            raise bad("vision.layers", "arch vit needs an integer layer count")
        if s % v["patch_size"]:
            raise bad("vision.patch_size", f"{v['patch_size']} does not divide image_size {s}")
        if v["width"] % v["heads"]:
            raise bad("vision.heads", f"{v['heads']} does not divide vision.width {v['width']}")
    if v["pos_embed"] != "learnable" and (lib != "open_clip" or out["arch"] != "vit"):
        raise bad("vision.pos_embed", f"{v['pos_embed']!r} is an open_clip ViT option "
                  f"(library open_clip, arch vit); this model is {lib} {out['arch']}: "
                  "use learnable")
    if t["width"] % t["heads"]:
        raise bad("text.heads", f"{t['heads']} does not divide text.width {t['width']}")
    if lib == "transformers" and out["embed_dim"] != v["width"]:
        raise bad("embed_dim", f"SigLIP's embedding is the vision width: set embed_dim = "
                  f"vision.width = {v['width']} (got {out['embed_dim']})")
    kind = out["image_objective"]["kind"]
    if fam == "siglip2" and kind == "none":
        raise bad("image_objective.kind", "family siglip2 needs an image objective (pixel or masked)")
    if fam != "siglip2" and kind != "none":
        raise bad("image_objective.kind", f"only family siglip2 trains an image objective, "
                  f"this model is {fam!r}")
    if out["train"]["partial_captions"]["fraction"] > 0:
        if fam != "clip":
            raise bad("train.partial_captions.fraction", f"partial captions are a clip-family "
                      f"option (softmax contrastive loss); this model is {fam!r}: set 0")
        if out["captions"] != "rich":
            raise bad("train.partial_captions.fraction", "partial captions name factors the "
                      f"{out['captions']!r} captions leave out; only captions: rich may use them "
                      "(set 0)")
    return out


# ---------------------------------------------------------------------------------------------
# building


def open_clip_configs(cfg: Mapping[str, Any]) -> tuple[dict, dict]:
    """(``model_cfg``, ``preprocess_cfg``) of open_clip for a validated toy config.

    ViT: ``head_width = width / heads``, ``pos_embed_type = vision.pos_embed``.  ModifiedResNet: ``vision.layers`` are the four stage
    depths, ``vision.width`` the stem width and the attention pool has ``heads`` heads over
    ``32 * width`` channels (open_clip derives heads as ``32 * width / head_width``).
    """
    v, t, s = cfg["vision"], cfg["text"], int(cfg["image_size"])
    if cfg["arch"] == "resnet":
        vision_cfg = {"image_size": s, "layers": [int(x) for x in v["layers"]],
                      "width": int(v["width"]), "head_width": int(v["width"]) * 32 // int(v["heads"])}
    else:
        vision_cfg = {"image_size": s, "layers": int(v["layers"]), "width": int(v["width"]),
                      "head_width": int(v["width"]) // int(v["heads"]),
                      "patch_size": int(v["patch_size"]), "mlp_ratio": float(v["mlp_ratio"]),
                      "pos_embed_type": str(v["pos_embed"])}
    text_cfg = {"context_length": int(t["context_length"]), "vocab_size": OPEN_CLIP_VOCAB,
                "width": int(t["width"]), "heads": int(t["heads"]), "layers": int(t["layers"]),
                "mlp_ratio": float(t["mlp_ratio"])}
    model_cfg = {"embed_dim": int(cfg["embed_dim"]), "quick_gelu": False,
                 "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    preprocess_cfg = {"size": s, "mean": list(OPEN_CLIP_MEAN), "std": list(OPEN_CLIP_STD),
                      "interpolation": "bicubic", "resize_mode": "squash"}
    return model_cfg, preprocess_cfg


def siglip_config(cfg: Mapping[str, Any], vocab_size: int, pad_id: int, eos_id: int):
    """A ``transformers.SiglipConfig`` for a validated toy config."""
    from transformers import SiglipConfig

    v, t = cfg["vision"], cfg["text"]
    text_config = dict(
        vocab_size=int(vocab_size), hidden_size=int(t["width"]),
        intermediate_size=int(round(t["width"] * t["mlp_ratio"])),
        num_hidden_layers=int(t["layers"]), num_attention_heads=int(t["heads"]),
        max_position_embeddings=int(t["context_length"]), projection_size=int(cfg["embed_dim"]),
        pad_token_id=int(pad_id), bos_token_id=None, eos_token_id=int(eos_id),
    )
    vision_config = dict(
        hidden_size=int(v["width"]), intermediate_size=int(round(v["width"] * v["mlp_ratio"])),
        num_hidden_layers=int(v["layers"]), num_attention_heads=int(v["heads"]),
        image_size=int(cfg["image_size"]), patch_size=int(v["patch_size"]), num_channels=3,
    )
    return SiglipConfig(text_config=text_config, vision_config=vision_config)


class ToyModel:
    """A toy model being trained: the library module plus everything needed to feed it.

    Subclasses implement the library-specific parts; ``preprocess`` and ``tokenize`` are the
    loader's own (see :mod:`cliplens.models.registry`).
    """

    library: str
    model: torch.nn.Module
    image_objective: PatchPixelObjective | None = None

    def __init__(self, name: str, cfg: Mapping[str, Any]):
        self.name, self.cfg = name, dict(cfg)
        self.family = cfg["family"]

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

    def __init__(self, name: str, cfg: Mapping[str, Any]):
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
        from cliplens.models.registry import save_open_clip_dir

        save_open_clip_dir(self.model, self.model_cfg, self.preprocess_cfg, path)


class SiglipToy(ToyModel):
    """A transformers ``SiglipModel`` with the toy word-level tokenizer and a
    ``SiglipImageProcessor`` (square resize, mean = std = 0.5); sigmoid loss with SigLIP's
    initial temperature t' = log 10 and bias b = -10; for family siglip2 plus
    ``image_objective.weight`` x L_img."""

    library = "transformers"

    def __init__(self, name: str, cfg: Mapping[str, Any]):
        from transformers import SiglipImageProcessor, SiglipModel

        from cliplens.models.toy_text import EOS, PAD, build_toy_tokenizer

        super().__init__(name, cfg)
        ctx = int(cfg["text"]["context_length"])
        self.tokenizer = build_toy_tokenizer(ctx)
        self.model = SiglipModel(siglip_config(
            cfg, len(self.tokenizer), self.tokenizer.convert_tokens_to_ids(PAD),
            self.tokenizer.convert_tokens_to_ids(EOS)))
        with torch.no_grad():
            self.model.logit_scale.fill_(math.log(10.0))
            self.model.logit_bias.fill_(-10.0)
        s = int(cfg["image_size"])
        self.image_processor = SiglipImageProcessor(
            size={"height": s, "width": s}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        self.context_length = ctx
        obj = cfg["image_objective"]
        if obj["kind"] != "none":
            self.image_objective = PatchPixelObjective(
                int(cfg["vision"]["width"]), int(cfg["vision"]["patch_size"]), 3,
                kind=obj["kind"], hidden=int(obj["hidden"]), mask_ratio=float(obj["mask_ratio"]))
            self.objective_weight = float(obj["weight"])

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
        from cliplens.models.registry import save_transformers_dir

        save_transformers_dir(self.model, self.image_processor, self.tokenizer, path)
        if self.image_objective is not None:
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in self.image_objective.state_dict().items()}
            save_file(state, str(path / IMAGE_OBJECTIVE_FILE))


def build_toy_model(name: str, cfg: Mapping[str, Any]) -> ToyModel:
    """Build (randomly initialised, from the torch RNG's current state) the toy model ``name``
    from its config slice (validated and defaults filled here)."""
    cfg = toy_model_config(name, cfg)
    return OpenClipToy(name, cfg) if cfg["library"] == "open_clip" else SiglipToy(name, cfg)


# ---------------------------------------------------------------------------------------------
# training


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up (step+1)/warmup over the first ``warmup`` steps,
    then cosine decay 0.5 (1 + cos(pi * (step - warmup) / (steps - warmup))) to 0."""
    if step < warmup:
        return (step + 1) / warmup
    rest = max(steps - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / rest))


def make_optimizer(toy: ToyModel, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (betas 0.9/0.98, eps 1e-6; torch's fused kernel where available); weight decay on
    matrices only (ndim >= 2), not on gains, biases, temperatures or the logit bias."""
    decay, no_decay = [], []
    for _, p in toy.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = {"lr": lr, "betas": (0.9, 0.98), "eps": 1e-6}
    try:  # the fused kernel is several times faster on CPU (8 M parameters, mostly token embeddings)
        return torch.optim.AdamW(groups, fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, **kw)


#: label factors a grouped batch may share (``train.batching.share``)
BATCHING_FACTORS = ("colour", "shape", "position", "size", "background")


class BatchSampler:
    """Index batches for :func:`fit`, drawn from ``gen`` (deterministic given the seed).

    ``batching`` is ``train.batching``: ``kind: random`` (the default) visits a fresh
    permutation per epoch and drops the last incomplete batch, exactly as before this option
    existed.  ``kind: grouped`` builds ``round(grouped_fraction * batch_size / group_size)``
    groups of ``group_size`` images that share the label factors in ``share`` (hard
    negatives: the contrastive loss can only separate them by the other factors); the rest of
    the batch is filled from the epoch permutation, without repeating an image.  ``share`` is
    a list of factors, or a list of such lists used in turn group by group.  Each group comes
    from a different bucket (combination of the shared factors) where there are enough; a
    bucket picks proportionally to its size, its members uniformly without replacement.  With
    ``distinct: true`` no two members of a group have the same labels on every factor (e.g.
    sharing everything but shape, a group of up to 6 holds 6 different shapes): a group then
    takes one member from each of ``g`` different label combinations of its bucket, so the
    captions inside a group always describe different images and no in-group negative is a
    false one; ``g`` is ``group_size`` or, if fewer, the most combinations any bucket of that
    alternative has (2 when only size may differ), and the rest of the batch is random pairs.
    The labels only choose which pairs meet in a batch; the loss never sees them.
    """

    def __init__(self, n: int, batch_size: int, gen: torch.Generator,
                 batching: Mapping[str, Any] | None = None,
                 labels: Mapping[str, Any] | None = None):
        self.n, self.bs, self.gen = n, min(int(batch_size), n), gen
        b = dict(batching or {})
        self.kind = b.get("kind", "random")
        self.order, self.pos = torch.randperm(n, generator=gen), 0
        self.grouped = 0  # the last batch's first `grouped` pairs are its groups, the rest random
        if self.kind == "random":
            return
        if self.kind != "grouped":
            raise ValueError(f"train.batching.kind: unknown {self.kind!r} (random, grouped)")
        share = b.get("share", ["colour", "size", "background"])
        alts = [list(share)] if share and isinstance(share[0], str) else [list(a) for a in share]
        alts = alts or [[]]  # share nothing: groups of random pairs
        if labels is None:
            raise ValueError("train.batching.kind grouped needs the training labels (fit(labels=...))")
        self.g = max(1, min(int(b.get("group_size", 8)), self.bs))
        frac = float(b.get("grouped_fraction", 1.0))
        self.n_groups = int(round(frac * self.bs / self.g))
        if frac > 0:
            self.n_groups = max(1, self.n_groups)
        self.n_groups = min(self.n_groups, self.bs // self.g)
        self.distinct = bool(b.get("distinct", False))
        full = None
        if self.distinct:  # one id per combination of every label factor there is
            have = [f for f in BATCHING_FACTORS if f in labels]
            _, full = np.unique(np.stack([np.asarray(labels[f], dtype=np.int64) for f in have], 1),
                                axis=0, return_inverse=True)
            full = full.reshape(-1)
        self.alts = []  # per alternative: (bucket members list, bucket weights, group size)
        for factors in alts:
            missing = [f for f in factors if f not in labels]
            if missing:
                raise ValueError(f"train.batching.share: no labels {missing}; "
                                 f"have {sorted(labels)}")
            cols = np.stack([np.asarray(labels[f], dtype=np.int64) for f in factors], 1) \
                if factors else np.zeros((n, 1), np.int64)
            if len(cols) != n:
                raise ValueError(f"labels have {len(cols)} rows for {n} pairs")
            _, inv = np.unique(cols, axis=0, return_inverse=True)
            inv = inv.reshape(-1)
            members = [torch.from_numpy(np.flatnonzero(inv == k)) for k in range(int(inv.max()) + 1)]
            weights = torch.tensor([float(len(m)) for m in members], dtype=torch.float64)
            g = self.g
            if self.distinct:  # a bucket's members split by full label combination
                members = [[m[torch.from_numpy(full[m.numpy()] == c)] for c in np.unique(full[m.numpy()])]
                           for m in members]
                g = min(g, max(len(m) for m in members))  # e.g. 2 when only size may differ
                if g < 2:
                    raise ValueError(f"train.batching.distinct: sharing {factors}, every pair of "
                                     "a group would have the same labels; share fewer factors")
                # a full group needs g combinations; weight stays the bucket's size
                weights = weights * torch.tensor([float(len(m) >= g) for m in members],
                                                 dtype=torch.float64)
            self.alts.append((members, weights, g))

    def _random(self, k: int, exclude: set[int]) -> list[torch.Tensor]:
        out, need = [], k
        while need > 0:
            if self.pos >= self.n:
                self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
            chunk = self.order[self.pos:self.pos + need]
            self.pos += len(chunk)
            if exclude:
                chunk = chunk[[int(i) not in exclude for i in chunk]]
            out.append(chunk)
            need -= len(chunk)
        return out

    def _draw(self, members) -> torch.Tensor:
        """A bucket's members in random order; ``distinct``: one random member of each of its
        label combinations, the combinations in random order."""
        if not self.distinct:
            return members[torch.randperm(len(members), generator=self.gen)]
        picks = [m[torch.randint(len(m), (1,), generator=self.gen)] for m in members]
        return torch.cat(picks)[torch.randperm(len(picks), generator=self.gen)]

    def next(self) -> torch.Tensor:
        if self.kind == "random":
            if self.pos + self.bs > self.n:
                self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
            idx = self.order[self.pos:self.pos + self.bs]
            self.pos += self.bs
            return idx
        chosen: list[list[torch.Tensor]] = []  # per alternative, its groups
        for a, (members, weights, g) in enumerate(self.alts):
            count = len(range(a, self.n_groups, len(self.alts)))
            eligible = weights * (weights >= g)
            if count == 0:
                buckets = []
            elif count <= int((eligible > 0).sum()):  # distinct buckets, each with a full group
                buckets = torch.multinomial(eligible, count, replacement=False,
                                            generator=self.gen).tolist()
            else:
                buckets = torch.multinomial(weights, count, replacement=True,
                                            generator=self.gen).tolist()
            chosen.append([self._draw(members[bk]) for bk in buckets])
        parts, used = [], set()
        for j in range(self.n_groups):  # alternatives in turn; no image twice in a batch
            cand = chosen[j % len(self.alts)][j // len(self.alts)]
            if used:
                cand = cand[[int(i) not in used for i in cand]]
            parts.append(cand[:self.alts[j % len(self.alts)][2]])
            used.update(parts[-1].tolist())
        idx = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
        self.grouped = len(idx)
        rest = self.bs - len(idx)
        if rest > 0:
            idx = torch.cat([idx] + self._random(rest, set(idx.tolist())))
        return idx


def partial_caption_set(toy: ToyModel, labels: Mapping[str, Any] | None,
                        train_cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """The partial captions :func:`fit` swaps in (``train.partial_captions``; None when its
    ``fraction`` is 0): ``variants`` draws of :func:`cliplens.toyworld.partial_captions` per
    image from a numpy generator seeded with ``train.seed``, tokenised (each distinct text
    once).  Returns ``{"tokens" [V, N, L], "named" bool [V, N, F], "labels" int [N, F],
    "fraction", "where"}``, factors in :data:`cliplens.toyworld.FACTORS` order."""
    opts = train_cfg.get("partial_captions") or {}
    if float(opts.get("fraction", 0.0)) <= 0:
        return None
    if labels is None:
        raise ValueError("train.partial_captions needs the training labels (the factors each "
                         "partial caption names)")
    rng = np.random.default_rng(int(train_cfg["seed"]))
    texts, named = [], []
    for _ in range(int(opts.get("variants", 2))):
        t, m = toyworld.partial_captions(labels, rng, int(opts.get("max_factors", 4)))
        texts += t
        named.append(m)
    distinct, inverse = np.unique(texts, return_inverse=True)
    tokens = toy.tokenize(list(distinct))[torch.from_numpy(inverse.reshape(-1))]
    lab = np.stack([np.asarray(labels[f], dtype=np.int64) for f in toyworld.FACTORS], 1)
    v, n = len(named), len(lab)
    return {"tokens": tokens.reshape(v, n, -1), "named": torch.from_numpy(np.stack(named)),
            "labels": torch.from_numpy(lab), "fraction": float(opts["fraction"]),
            "where": str(opts.get("where", "all"))}


def fit(
    toy: ToyModel,
    pixels: torch.Tensor,
    tokens: torch.Tensor,
    train_cfg: Mapping[str, Any],
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    labels: Mapping[str, Any] | None = None,
    partial: Mapping[str, Any] | None = None,
    attention: str = "math",
) -> dict[str, Any]:
    """Train ``toy`` on (``pixels`` [N, 3, S, S], ``tokens`` [N, L]) pairs.

    ``train_cfg``: ``steps``, ``batch_size`` (capped at N), ``lr``, ``weight_decay``,
    ``warmup`` (a fraction of ``steps``), ``seed`` (batch order and masks), ``batching``
    (optional, see :class:`BatchSampler`).  With the default random batching each epoch visits
    a fresh permutation; the last incomplete batch of an epoch is dropped.  ``labels`` (factor
    -> [N] ints) are needed only by grouped batching, to choose the batches.  ``partial``
    (``train.partial_captions``, as :func:`partial_caption_set` builds it: ``tokens`` [V, N, L],
    ``named`` bool [V, N, F], ``labels`` int [N, F], ``fraction``, ``where``): each step swaps
    each pair's caption (``where: random``: only the pairs outside the batch's groups), with
    probability ``fraction``, for one of its V partial captions, and the loss is
    the multi-positive one over :func:`caption_match` (the dataset's captions name every
    factor).  Returns
    ``{"steps", "final_loss" (mean of the last min(10, steps) steps), "loss_history"
    ([step, loss] at about 20 points), "seconds" (wall clock), "cpu_seconds" (CPU time of this
    process, all threads)}``.
    """
    from tqdm.auto import tqdm

    steps = int(train_cfg["steps"])
    n = len(pixels)
    if n == 0 or len(tokens) != n:
        raise ValueError(f"need as many captions as images, got {len(tokens)} and {n}")
    bs = min(int(train_cfg["batch_size"]), n)
    warmup = int(round(float(train_cfg["warmup"]) * steps))
    gen = torch.Generator().manual_seed(int(train_cfg["seed"]))
    opt = make_optimizer(toy, float(train_cfg["lr"]), float(train_cfg["weight_decay"]))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup))
    toy.to(device).train()
    every = max(1, steps // 20)
    losses, history = [], []
    sampler = BatchSampler(n, bs, gen, train_cfg.get("batching"), labels)
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(range(steps), desc=f"train {toy.name}", disable=not progress, mininterval=2.0)
    with attention_backend(attention, device):
        for step in bar:
            idx = sampler.next()
            tok, match = tokens[idx], None
            if partial is not None:
                swap = torch.rand(len(idx), generator=gen) < float(partial["fraction"])
                if partial.get("where", "all") == "random":  # keep the groups' captions
                    swap[:sampler.grouped] = False
                variant = torch.randint(len(partial["tokens"]), (len(idx),), generator=gen)
                tok = torch.where(swap[:, None], partial["tokens"][variant, idx], tok)
                named = partial["named"][variant, idx] | ~swap[:, None]
                match = caption_match(partial["labels"][idx], named).to(device)
            loss, parts = toy.loss(pixels[idx].to(device), tok.to(device), gen, match)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            toy.after_step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"{toy.name}: loss became {value} at step {step}; "
                                         "lower train.lr")
            losses.append(value)
            if step % every == 0 or step == steps - 1:
                history.append([step, round(value, 5)])
                bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
    toy.train(False)
    tail = losses[-min(10, len(losses)):] if losses else [float("nan")]
    return {"steps": steps, "final_loss": float(np.mean(tail)), "loss_history": history,
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


#: ``fit(attention=...)`` choices
ATTENTION_BACKENDS = ("math", "default")


def attention_backend(name: str, device: str | torch.device = "cpu"):
    """Context manager choosing the kernel behind ``F.scaled_dot_product_attention`` (which
    open_clip's ``nn.MultiheadAttention`` and transformers' SigLIP call) while a toy trains.

    ``"math"`` on a CPU: the plain ``softmax(Q K^T / sqrt(d)) V`` of batched matrix products
    (the same function; only rounding differs).  The toys' sequences are short (17 image
    tokens, 28 text tokens) and there the fused flash kernel torch picks by default costs more
    than it saves: ``benchmarks/toy_step_speed.py`` measures both per training step.  On other
    devices, and with ``"default"``, torch chooses.
    """
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {name!r}")
    if name == "math" and torch.device(device).type == "cpu":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def embed_images(toy: ToyModel, pixels: torch.Tensor, batch: int = 500, device="cpu") -> torch.Tensor:
    """L2-normalised image embeddings [N, D] (eval mode)."""
    toy.train(False)
    out = [toy.encode_image(pixels[i:i + batch].to(device)).float().cpu()
           for i in range(0, len(pixels), batch)]
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def text_classifier(toy: ToyModel, classnames: Sequence[str], templates: Sequence[str],
                    device="cpu") -> torch.Tensor:
    """[C, D]: w_c = normalize(mean_j normalize(f_text(template_j.format(class_c))))."""
    toy.train(False)
    texts = [t.format(c) for c in classnames for t in templates]
    emb = F.normalize(toy.encode_text(toy.tokenize(texts).to(device)).float().cpu(), dim=-1)
    emb = emb.reshape(len(classnames), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1)


def zeroshot_accuracies(
    toy: ToyModel, split: Mapping[str, Any], factors: Sequence[str] = ZEROSHOT_FACTORS,
    pixels: torch.Tensor | None = None, device="cpu",
) -> dict[str, float]:
    """Zero-shot top-1 accuracy per toy factor on ``split`` (``images`` uint8 and ``labels``),
    with the toy world's class names and templates."""
    if pixels is None:
        pixels = toy.preprocess(split["images"])
    img = embed_images(toy, pixels, device=device)
    out = {}
    for factor in factors:
        w = text_classifier(toy, toyworld.classnames(factor),
                            toyworld.ZEROSHOT_TEMPLATES[factor], device=device)
        pred = (img @ w.T).argmax(1).numpy()
        out[factor] = float(np.mean(pred == np.asarray(split["labels"][factor])))
    return out


# ---------------------------------------------------------------------------------------------
# the whole job


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train_toy(
    name: str,
    cfg: Mapping[str, Any],
    train: Mapping[str, Any],
    val: Mapping[str, Any] | None = None,
    progress: bool = True,
    device: str | torch.device | None = "cpu",
) -> tuple[ToyModel, dict[str, Any]]:
    """Build, train and evaluate the toy model ``name``; return (model on the CPU, metadata).

    ``cfg`` is the model's config slice (``toy_models.NAME``); ``train`` / ``val`` are splits as
    :func:`cliplens.data.toy.read_split` returns them (``images`` uint8 [N, H, W, 3], ``labels``,
    ``captions_rich``, ``captions_poor``).  With ``val``, zero-shot accuracies per factor go into
    the metadata: ``library, family, name, captions, config, image_size, embed_dim, parameters,
    steps, final_loss, loss_history, prep_seconds, train_seconds, train_cpu_seconds, threads,
    device[, zeroshot, image_objective]``.  ``train_seconds`` is the optimisation loop; ``prep_seconds`` building
    the model, preprocessing the images and tokenising the captions.
    """
    cfg = toy_model_config(name, cfg)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    torch.manual_seed(int(cfg["train"]["seed"]))
    toy = build_toy_model(name, cfg)
    captions = train[f"captions_{cfg['captions']}"]
    pixels = toy.preprocess(train["images"])
    tokens = toy.tokenize(captions)
    log.info("%s: %d pairs at %d px, %s parameters", name, len(pixels), cfg["image_size"],
             f"{sum(p.numel() for _, p in toy.parameters()):,}")
    partial = partial_caption_set(toy, train.get("labels"), cfg["train"])
    prep_seconds = time.perf_counter() - t0
    result = fit(toy, pixels, tokens, cfg["train"], device=dev, progress=progress,
                 labels=train.get("labels"), partial=partial)
    del pixels, tokens
    meta: dict[str, Any] = {
        "library": toy.library,
        "family": cfg["family"],
        "name": name,
        "captions": cfg["captions"],
        "config": cfg,
        "image_size": int(cfg["image_size"]),
        "embed_dim": int(cfg["embed_dim"]),
        "parameters": int(sum(p.numel() for p in toy.model.parameters())),
        "steps": result["steps"],
        "final_loss": result["final_loss"],
        "loss_history": result["loss_history"],
        "prep_seconds": round(prep_seconds, 3),
        "train_seconds": round(result["seconds"], 3),
        "train_cpu_seconds": round(result["cpu_seconds"], 3),
        "threads": torch.get_num_threads(),
        "device": str(dev),
    }
    if toy.image_objective is not None:
        meta["image_objective"] = {"file": IMAGE_OBJECTIVE_FILE, **cfg["image_objective"]}
    if val is not None:
        meta["zeroshot"] = zeroshot_accuracies(toy, val, device=dev)
        log.info("%s: zero-shot on val %s", name,
                 ", ".join(f"{k} {v:.3f}" for k, v in meta["zeroshot"].items()))
    toy.to("cpu")
    return toy, meta


def train_toy_model(
    name: str,
    cfg: Mapping[str, Any],
    train: Mapping[str, Any],
    val: Mapping[str, Any] | None,
    out_dir: str | os.PathLike,
    progress: bool = True,
    device: str | torch.device | None = "cpu",
) -> dict[str, Any]:
    """:func:`train_toy`, then :func:`save_toy_model` into ``out_dir``; returns the metadata."""
    toy, meta = train_toy(name, cfg, train, val, progress=progress, device=device)
    save_toy_model(toy, meta, out_dir)
    return meta


def save_toy_model(toy: ToyModel, meta: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write the model directory atomically: everything goes into a temporary sibling, which
    then replaces ``out_dir`` (an existing ``out_dir`` is removed first)."""
    from cliplens.models.registry import write_model_meta

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        toy.save(tmp)
        write_model_meta(tmp, meta)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
