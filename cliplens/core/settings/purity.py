"""Settings of study 004, feature purity (``purity.schema.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import Section


@dataclass(frozen=True)
class PurityPruning(Section):
    SCHEMA: ClassVar[str] = "purity.pruning"
    keep: tuple[int, ...]
    seeds: int
    silhouette_sample: int


@dataclass(frozen=True)
class MisalignTrain(Section):
    SCHEMA: ClassVar[str] = "purity.misalign.train"
    steps: int
    batch_size: int
    lr: float
    checkpoint_every: int


@dataclass(frozen=True)
class MisalignNeighbours(Section):
    SCHEMA: ClassVar[str] = "purity.misalign.neighbours"
    search: str
    probes: int

    def applied(self) -> dict:
        """The settings the search uses (``probes`` only for ``ivf``): a rule's params, so
        changing ``probes`` does not rerun exact searches."""
        return self.to_dict() if self.search == "ivf" else {"search": self.search}


@dataclass(frozen=True)
class PurityMisalign(Section):
    SCHEMA: ClassVar[str] = "purity.misalign"
    models: tuple[str, ...]
    fractions: tuple[float, ...]
    seeds: int
    dataset: str
    split: str
    captions: str
    images: int
    init: str
    neighbours: MisalignNeighbours
    train: MisalignTrain


@dataclass(frozen=True)
class PuritySettings(Section):
    SCHEMA: ClassVar[str] = "purity"
    pairs: tuple[tuple[str, str], ...]
    tasks: tuple[str, ...]
    include_diagonal: bool
    pruning: PurityPruning
    misalign: PurityMisalign

    @property
    def models(self) -> list[str]:
        """Every model of the pairs, each once, in order."""
        return list(dict.fromkeys(m for pair in self.pairs for m in pair))
