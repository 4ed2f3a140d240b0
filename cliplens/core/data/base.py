"""The one interface every image dataset offers to caches and studies.

An :class:`ImageDataset` is an indexable collection of RGB images with integer labels.  Caches
iterate it in order (``images(start, stop)``), so a shard is a contiguous row range and a sharded
extraction concatenates to exactly the unsharded one.
"""

from __future__ import annotations

import abc
from typing import Sequence

import numpy as np
from PIL import Image


class ImageDataset(abc.ABC):
    """An ordered, indexable set of RGB images.

    Attributes
    ----------
    name, split:
        The dataset spec (``toy``, ``cifar10``, ...) and split (``train``, ``test``, ...).
    classnames:
        Canonical class names for ``labels`` (None when the dataset has no single label).
    labels:
        int array [N] of class indices, or None.
    """

    name: str
    split: str
    classnames: list[str] | None = None
    labels: np.ndarray | None = None

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def image(self, i: int) -> Image.Image:
        """Image ``i`` as an RGB PIL image."""

    def images(self, start: int, stop: int) -> list[Image.Image]:
        """Images ``start .. stop-1`` (a contiguous block; subclasses may read it at once)."""
        return [self.image(i) for i in range(start, stop)]

    def describe(self) -> dict:
        """Provenance of the dataset: what a cache built from it records."""
        return {"dataset": self.name, "split": self.split, "n": len(self)}


def to_pil(batch: np.ndarray | Sequence[np.ndarray]) -> list[Image.Image]:
    """uint8 arrays [N, H, W, 3] (or [N, H, W] grey) -> RGB PIL images."""
    return [Image.fromarray(np.asarray(a)).convert("RGB") for a in batch]
