"""Settings of study 001, head direct effects (``heads.schema.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import Section



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
    pc_reconstruction: str
    rank_rtol: float


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
