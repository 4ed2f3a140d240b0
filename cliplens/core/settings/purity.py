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
class PuritySettings(Section):
    SCHEMA: ClassVar[str] = "purity"
    pairs: tuple[tuple[str, str], ...]
    tasks: tuple[str, ...]
    include_diagonal: bool
    pruning: PurityPruning

    @property
    def models(self) -> list[str]:
        """Every model of the pairs, each once, in order."""
        return list(dict.fromkeys(m for pair in self.pairs for m in pair))
