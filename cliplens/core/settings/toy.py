"""Settings of the toy world (``toy.schema.yaml``) and of the toy models
(``toy_models.schema.yaml``), with the architecture constraints the schema cannot state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

from ..config import ConfigError
from .base import Section


class ToyConfigError(ConfigError):
    """A toy model's config slice is inconsistent; the message names the model and the key."""


# ---------------------------------------------------------------------------------------------
# the toy world (toy.schema.yaml)


@dataclass(frozen=True)
class ToySplits(Section):
    SCHEMA: ClassVar[str] = "toy.splits"
    train: int
    val: int
    test: int


@dataclass(frozen=True)
class SpuriousWorld(Section):
    SCHEMA: ClassVar[str] = "toy.spurious"
    classes: tuple[str, str]
    agreement_train: float
    agreement_test: float
    splits: Mapping[str, int]


@dataclass(frozen=True)
class ShiftWorld(Section):
    SCHEMA: ClassVar[str] = "toy.shift"
    colour: str
    years: tuple[int, ...]
    n_per_year: int
    p_start: float
    p_end: float


@dataclass(frozen=True)
class ColourOpsWorld(Section):
    SCHEMA: ClassVar[str] = "toy.colour_ops"
    blue_factor: float
    splits: Mapping[str, int]


@dataclass(frozen=True)
class ToySettings(Section):
    """The toy world generator (:mod:`cliplens.core.toy.world`)."""

    SCHEMA: ClassVar[str] = "toy"
    seed: int
    image_size: int
    noise: float
    textured_background: bool
    splits: ToySplits
    spurious: SpuriousWorld
    shift: ShiftWorld
    colour_ops: ColourOpsWorld


# ---------------------------------------------------------------------------------------------
# toy models (toy_models.schema.yaml)


@dataclass(frozen=True)
class ToyVision(Section):
    SCHEMA: ClassVar[str] = "toy_models.*.vision"
    width: int
    layers: int | tuple[int, int, int, int]
    heads: int
    patch_size: int
    mlp_ratio: float
    pos_embed: str


@dataclass(frozen=True)
class ToyText(Section):
    SCHEMA: ClassVar[str] = "toy_models.*.text"
    width: int
    layers: int
    heads: int
    context_length: int
    mlp_ratio: float


@dataclass(frozen=True)
class Batching(Section):
    SCHEMA: ClassVar[str] = "toy_models.*.train.batching"
    kind: str
    group_size: int
    share: tuple
    distinct: bool
    grouped_fraction: float

    @property
    def alternatives(self) -> list[list[str]]:
        """``share`` as a list of factor lists (one list = one alternative used in turn)."""
        share = self.share
        if share and isinstance(share[0], str):
            return [list(share)]
        return [list(a) for a in share] or [[]]


@dataclass(frozen=True)
class PartialCaptions(Section):
    SCHEMA: ClassVar[str] = "toy_models.*.train.partial_captions"
    fraction: float
    variants: int
    max_factors: int
    where: str


@dataclass(frozen=True)
class ToyTrain(Section):
    SCHEMA: ClassVar[str] = "toy_models.*.train"
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup: float
    seed: int
    batching: Batching
    partial_captions: PartialCaptions


@dataclass(frozen=True)
class ImageObjective(Section):
    SCHEMA: ClassVar[str] = "toy_models.*.image_objective"
    kind: str
    weight: float
    hidden: int
    mask_ratio: float


@dataclass(frozen=True)
class ToyModelSettings(Section):
    """One toy model (``toy_models.NAME``); :meth:`check` holds the architecture constraints."""

    SCHEMA: ClassVar[str] = "toy_models.*"
    library: str
    family: str
    arch: str
    captions: str
    image_size: int
    embed_dim: int
    vision: ToyVision
    text: ToyText
    train: ToyTrain
    image_objective: ImageObjective

    def check(self, where: str) -> None:
        check_toy_model(self, where)


def check_toy_model(cfg: ToyModelSettings, where: str) -> None:
    """The architecture constraints the schema cannot state: library and family agree, the image
    size suits the tower (a multiple of 32 for a ModifiedResNet, of the patch for a ViT), heads
    divide widths, SigLIP's embedding is its vision width, only SigLIP2 has an image objective,
    partial captions only for rich-caption CLIPs.  Raises :class:`ToyConfigError` at ``where``."""

    def bad(key: str, msg: str) -> ToyConfigError:
        return ToyConfigError(f"{where}.{key}: {msg}")

    lib, fam, v, t = cfg.library, cfg.family, cfg.vision, cfg.text
    if (lib == "open_clip") != (fam == "clip"):
        raise bad("family", f"family {fam!r} does not go with library {lib!r} "
                  "(clip: open_clip; siglip, siglip2: transformers)")
    s = cfg.image_size
    if lib == "open_clip" and cfg.arch == "resnet":
        if not isinstance(v.layers, tuple):
            raise bad("vision.layers", "arch resnet needs a list of 4 block counts, e.g. [1, 1, 1, 1]")
        if s % 32:
            raise bad("image_size", f"a ModifiedResNet needs a multiple of 32, got {s}")
        if (v.width * 32) % v.heads:
            raise bad("vision.heads", f"must divide the attention pool width 32*{v.width}")
    else:
        if lib == "transformers" and cfg.arch != "vit":
            raise bad("arch", "transformers toys are ViTs (arch: vit)")
        if not isinstance(v.layers, int):
            raise bad("vision.layers", "arch vit needs an integer layer count")
        if s % v.patch_size:
            raise bad("vision.patch_size", f"{v.patch_size} does not divide image_size {s}")
        if v.width % v.heads:
            raise bad("vision.heads", f"{v.heads} does not divide vision.width {v.width}")
    if v.pos_embed != "learnable" and (lib != "open_clip" or cfg.arch != "vit"):
        raise bad("vision.pos_embed", f"{v.pos_embed!r} is an open_clip ViT option "
                  f"(library open_clip, arch vit); this model is {lib} {cfg.arch}: "
                  "use learnable")
    if t.width % t.heads:
        raise bad("text.heads", f"{t.heads} does not divide text.width {t.width}")
    if lib == "transformers" and cfg.embed_dim != v.width:
        raise bad("embed_dim", f"SigLIP's embedding is the vision width: set embed_dim = "
                  f"vision.width = {v.width} (got {cfg.embed_dim})")
    kind = cfg.image_objective.kind
    if fam == "siglip2" and kind == "none":
        raise bad("image_objective.kind", "family siglip2 needs an image objective (pixel or masked)")
    if fam != "siglip2" and kind != "none":
        raise bad("image_objective.kind", f"only family siglip2 trains an image objective, "
                  f"this model is {fam!r}")
    if cfg.train.partial_captions.fraction > 0:
        if fam != "clip":
            raise bad("train.partial_captions.fraction", f"partial captions are a clip-family "
                      f"option (softmax contrastive loss); this model is {fam!r}: set 0")
        if cfg.captions != "rich":
            raise bad("train.partial_captions.fraction", "partial captions name factors the "
                      f"{cfg.captions!r} captions leave out; only captions: rich may use them "
                      "(set 0)")
