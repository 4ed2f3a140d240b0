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
    table: NeuronTable
