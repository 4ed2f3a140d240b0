"""Typed settings: one frozen dataclass per slice of the config schema.

The JSON schema (``cliplens/core/schema/*.schema.yaml``) is the one source of keys, defaults and
documentation.  Each :class:`Section` subclass names the schema path it mirrors (``SCHEMA``) and
declares one field per property of that path, with a type but **no default**:
:meth:`Section.from_dict` fills the schema's defaults into a copy of the data, validates it (an
unknown key, a wrong type or a value out of range raises :class:`~cliplens.core.config.ConfigError`
naming the dotted key), converts nested sections and freezes lists into tuples, then runs the
section's cross-key checks (:meth:`Section.check`).  ``tests/core/test_settings.py`` holds every
section against its schema, so a key added to one and not the other fails there.

The workflow builds :class:`Settings` once, when the Snakefile is parsed (:func:`load_settings`);
rules hand each job its own slice as plain built-in values (:meth:`Section.to_dict`), and the job
rebuilds the typed slice with ``XSettings.from_dict(params)``.  Library functions take these
objects, never a raw dict.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Mapping, TypeVar

import jsonschema

from .config import ConfigError, fill_defaults, load_schema, validate_config

S = TypeVar("S", bound="Section")


def _freeze(value: Any) -> Any:
    """Deep copy of a plain value with lists turned into tuples (immutable settings)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _freeze(v) for k, v in value.items()}
    return value


def plain(value: Any) -> Any:
    """Sections, tuples and mappings -> built-in dicts and lists (what Snakemake params hold)."""
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def schema_at(path: str) -> dict:
    """The subschema at dotted ``path`` of the full config schema ('' = the top; ``*`` steps
    into ``additionalProperties``, e.g. ``toy_models.*.train``)."""
    node = load_schema()
    for key in [k for k in path.split(".") if k]:
        node = node["additionalProperties"] if key == "*" else node["properties"][key]
    return node


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_type(t: Any) -> type | None:
    return t if isinstance(t, type) and issubclass(t, Section) else None


@dataclass(frozen=True)
class Section:
    """Base of every settings dataclass (see the module docstring)."""

    SCHEMA: ClassVar[str] = ""

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any] | None = None, *,
                  where: str | None = None) -> S:
        """Defaults filled from the schema, validated, typed.  ``where`` is the dotted key that
        error messages start with (default: ``SCHEMA`` with ``*`` as written)."""
        where = cls.SCHEMA if where is None else where
        schema = schema_at(cls.SCHEMA)
        data = fill_defaults(plain(dict(data or {})), schema)
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data),
                        key=lambda e: list(e.absolute_path))
        if errors:
            lines = []
            for e in errors:
                key = ".".join([where] * bool(where) + [str(p) for p in e.absolute_path])
                lines.append(f"  {key or '<top level>'}: {e.message}")
            raise ConfigError("invalid config:\n" + "\n".join(lines))
        out = cls._build(data)
        out.check(where)
        return out

    @classmethod
    def _build(cls: type[S], data: Mapping[str, Any]) -> S:
        hints = _hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            t, value = hints[f.name], data[f.name]
            sub = _section_type(t)
            if sub is not None:
                value = sub._build(value)
            elif typing.get_origin(t) in (collections.abc.Mapping, dict) and _section_type(typing.get_args(t)[1]):
                value = {k: typing.get_args(t)[1]._build(v) for k, v in value.items()}
            else:
                value = _freeze(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    def check(self, where: str) -> None:
        """Cross-key constraints the schema cannot state; raise ConfigError naming the key.
        Nested sections are checked by their own ``check``."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Section):
                value.check(f"{where}.{f.name}" if where else f.name)
            elif isinstance(value, Mapping):
                for k, v in value.items():
                    if isinstance(v, Section):
                        v.check(f"{where}.{f.name}.{k}" if where else f"{f.name}.{k}")

    def to_dict(self) -> dict[str, Any]:
        """Plain built-in values (dicts, lists): the form rules hand to jobs as ``params``."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes`` (validated again)."""
        return type(self).from_dict({**self.to_dict(), **plain(changes)})


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"invalid config:\n  {key}: {message}")


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
        from .toy.models import check_toy_model

        check_toy_model(self, where)


# ---------------------------------------------------------------------------------------------
# zero-shot and caches


@dataclass(frozen=True)
class ZeroshotSettings(Section):
    SCHEMA: ClassVar[str] = "zeroshot"
    models: tuple[str, ...]
    tasks: tuple[str, ...]
    templates: Mapping[str, Any]
    batch_size: int


@dataclass(frozen=True)
class CacheSettings(Section):
    SCHEMA: ClassVar[str] = "cache"
    dtype: str
    shards: int
    batch_size: int


# ---------------------------------------------------------------------------------------------
# study 000: inversion (inversion.schema.yaml)


@dataclass(frozen=True)
class ReconstructorSettings(Section):
    SCHEMA: ClassVar[str] = "inversion.reconstructor"
    width: int
    depth: int
    heads: int
    mlp_ratio: float
    channels: tuple[int, ...]
    res_blocks: int
    normalize_tokens: bool
    whiten_tokens: bool
    whiten_eps: float


@dataclass(frozen=True)
class ReconstructorTrain(Section):
    SCHEMA: ClassVar[str] = "inversion.train"
    steps: int
    batch_size: int
    lr: float
    warmup: float
    min_lr_factor: float
    weight_decay: float
    grad_clip: float
    seed: int
    amp: bool
    workers: int
    checkpoint_every: int
    sample_every: int
    sample_images: int
    threads: int


@dataclass(frozen=True)
class SimilaritySettings(Section):
    SCHEMA: ClassVar[str] = "inversion.similarity"
    scorers: tuple[str, ...]
    n_images: int
    variants: tuple[str, ...]
    batch_size: int


@dataclass(frozen=True)
class InversionFigure(Section):
    SCHEMA: ClassVar[str] = "inversion.figure"
    n_images: int


@dataclass(frozen=True)
class OperatorSettings(Section):
    SCHEMA: ClassVar[str] = "inversion.operators"
    model: str
    dataset: str
    train_split: str
    test_split: str
    train_images: int | None
    test_images: int | None
    blue_factor: float
    ridge: float
    tasks: Mapping[str, tuple[str, ...]]
    n_examples: int


@dataclass(frozen=True)
class InversionSettings(Section):
    SCHEMA: ClassVar[str] = "inversion"
    extractors: tuple[str, ...]
    groups: Mapping[str, str]
    layer: int
    token_dtype: str
    token_shards: int | None
    dataset: str
    train_split: str
    train_images: int | None
    eval_split: str
    train_tokens: str
    reconstructor: ReconstructorSettings
    train: ReconstructorTrain
    similarity: SimilaritySettings
    figure: InversionFigure
    operators: OperatorSettings


# ---------------------------------------------------------------------------------------------
# study 001: heads (heads.schema.yaml)


@dataclass(frozen=True)
class HeadsFit(Section):
    SCHEMA: ClassVar[str] = "heads.fit"
    dataset: str
    split: str


@dataclass(frozen=True)
class TextSpanSettings(Section):
    SCHEMA: ClassVar[str] = "heads.textspan"
    text_sets: tuple[str, ...]
    n_words: int
    layers: int | None
    n_texts: int
    n_components: int | None
    scoring: str
    replace_n_texts: tuple[int, ...]
    pc_mass: float
    pc_texts: int


@dataclass(frozen=True)
class FactorSettings(Section):
    SCHEMA: ClassVar[str] = "heads.factors"
    enabled: bool
    split: str
    top: int


@dataclass(frozen=True)
class SegmentationSettings(Section):
    SCHEMA: ClassVar[str] = "heads.segmentation"
    dataset: str
    split: str
    task: str
    images: int | None
    layers: int
    batch_size: int
    show: int
    heads: tuple[tuple[int, int], ...]
    texts: tuple[str, ...]


@dataclass(frozen=True)
class NeighbourSettings(Section):
    SCHEMA: ClassVar[str] = "heads.neighbours"
    heads: tuple[tuple[int, int], ...]
    auto: int
    queries: int
    k: int


@dataclass(frozen=True)
class SpuriousSettings(Section):
    SCHEMA: ClassVar[str] = "heads.spurious"
    task: str | None
    fit_split: str
    fit_images: int | None
    heads: tuple[tuple[int, int], ...]
    n_heads: int


@dataclass(frozen=True)
class HeadsSettings(Section):
    SCHEMA: ClassVar[str] = "heads"
    models: tuple[str, ...]
    layers: int | tuple[int, ...] | None
    dtype: str
    shards: int | None
    batch_size: int
    fit: HeadsFit
    tasks: tuple[str, ...]
    textspan: TextSpanSettings
    factors: FactorSettings
    segmentation: SegmentationSettings
    neighbours: NeighbourSettings
    spurious: SpuriousSettings


# ---------------------------------------------------------------------------------------------
# the whole config


@dataclass(frozen=True)
class Settings(Section):
    """The whole workflow config (config.schema.yaml and one section per top-level key)."""

    SCHEMA: ClassVar[str] = ""
    results: str
    resources: str
    device: str
    hf_home: str | None
    toy: ToySettings
    toy_models: Mapping[str, ToyModelSettings]
    zeroshot: ZeroshotSettings
    cache: CacheSettings
    inversion: InversionSettings
    heads: HeadsSettings

    def check(self, where: str) -> None:
        super().check(where)
        if len(set(self.toy.spurious.classes)) != len(self.toy.spurious.classes):
            _fail("toy.spurious.classes", f"{list(self.toy.spurious.classes)} names one shape "
                  "twice; give two different shapes")


def load_settings(config: dict) -> Settings:
    """Validate ``config`` (filling its defaults in place, as Snakemake's config dict needs them)
    and return the typed :class:`Settings`.  Raises ConfigError naming every bad key."""
    validate_config(config)
    return Settings.from_dict(config)


def settings_from_file(path, overrides: Mapping[str, Any] | None = None) -> Settings:
    """:class:`Settings` of a YAML config file (``overrides`` merged in first), e.g. in a
    notebook: ``settings_from_file("config.yaml").toy_models["clip-vit"]``."""
    from .config import load_config

    return load_settings(load_config(path, overrides))
