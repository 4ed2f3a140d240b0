"""Settings of study 003, second-order effects of neurons and pairs (``neurons.schema.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import Section


@dataclass(frozen=True)
class NeuronComponents(Section):
    SCHEMA: ClassVar[str] = "neurons.components"
    top_k: int
    block_rows: int | None


@dataclass(frozen=True)
class NeuronSparse(Section):
    SCHEMA: ClassVar[str] = "neurons.sparse"
    k: int
    text_sets: tuple[str, ...]
    n_words: int
    normalise: str


@dataclass(frozen=True)
class NeuronEffects(Section):
    SCHEMA: ClassVar[str] = "neurons.effects"
    task: str | None
    images: int | None
    replace_n_texts: tuple[int, ...]
    percentiles: tuple[float, ...]


@dataclass(frozen=True)
class NeuronRetrieval(Section):
    SCHEMA: ClassVar[str] = "neurons.retrieval"
    neurons: tuple[int, ...]
    auto: int
    images: int
    pairs: int | None


@dataclass(frozen=True)
class NeuronSegmentation(Section):
    SCHEMA: ClassVar[str] = "neurons.segmentation"
    task: str | None
    images: int | None
    pairs_per_class: int | None
    batch_size: int
    show: int


@dataclass(frozen=True)
class NeuronShift(Section):
    SCHEMA: ClassVar[str] = "neurons.shift"
    dataset: str | None
    split: str
    images: int | None
    concept: tuple[str, ...]
    texts: int
    truth: dict | None


@dataclass(frozen=True)
class NeuronEvidence(Section):
    SCHEMA: ClassVar[str] = "neurons.evidence"
    texts: int
    min_r2: float


@dataclass(frozen=True)
class NeuronTable(Section):
    SCHEMA: ClassVar[str] = "neurons.table"
    top: int
    texts: int


@dataclass(frozen=True)
class NeuronsSettings(Section):
    SCHEMA: ClassVar[str] = "neurons"
    models: tuple[str, ...]
    dataset: str
    split: str
    images: int | None
    layer: int
    dtype: str
    shards: int | None
    batch_size: int
    components: NeuronComponents
    sparse: NeuronSparse
    effects: NeuronEffects
    retrieval: NeuronRetrieval
    segmentation: NeuronSegmentation
    shift: NeuronShift
    evidence: NeuronEvidence
    table: NeuronTable
