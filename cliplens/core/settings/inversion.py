"""Settings of study 000, feature inversion (``inversion.schema.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

from .base import Section



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
