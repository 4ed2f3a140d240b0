"""Settings of the shared rules: zero-shot evaluation (``zeroshot.schema.yaml``) and the row
caches (``cache.schema.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from .base import Section



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
