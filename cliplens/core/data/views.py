"""Views of a dataset: colour-transformed images (study 000's R<->B swap, blue suppression and
grayscale) and the first N rows.  :func:`open_view` gives dataset ``name``/``split`` through an
image view: a stored array of a toy dataset, else the transform applied on the fly."""

from __future__ import annotations

import logging
import os

import numpy as np
from PIL import Image

from ..toy import world
from .base import ImageDataset

log = logging.getLogger("cliplens")

#: image views; every key but "images" is a colour transform (study 000's colour operators)
VIEW_KEYS = ("images", "images_rb_swap", "images_b_suppressed", "images_gray")


# ---------------------------------------------------------------------------------------------
# image views


class TransformedView(ImageDataset):
    """``base`` with a colour transform applied to every image (R<->B swap, blue suppression or
    grayscale, as :func:`cliplens.world.colour_ops` computes them for the toy world)."""

    def __init__(self, base: ImageDataset, image_key: str, blue_factor: float = 0.0):
        if image_key not in VIEW_KEYS[1:]:
            raise ValueError(f"unknown image view {image_key!r}; one of {VIEW_KEYS}")
        self.base, self.image_key, self.blue_factor = base, image_key, float(blue_factor)
        self.name, self.split = base.name, base.split
        self.labels, self.classnames = base.labels, base.classnames

    def __len__(self) -> int:
        return len(self.base)

    def _apply(self, arr: np.ndarray) -> np.ndarray:
        if self.image_key == "images_rb_swap":
            return world.rb_swap(arr)
        if self.image_key == "images_b_suppressed":
            return world.suppress_blue(arr, self.blue_factor)
        return world.grayscale(arr)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self._apply(np.asarray(self.base.image(i).convert("RGB"))))

    def describe(self) -> dict:
        out = {**self.base.describe(), "image_key": self.image_key}
        if self.image_key == "images_b_suppressed":
            out["blue_factor"] = self.blue_factor
        return out


class FirstRows(ImageDataset):
    """The first ``n`` images of ``base`` (all if it has fewer)."""

    def __init__(self, base: ImageDataset, n: int):
        self.base, self.n = base, min(int(n), len(base))
        self.name, self.split = base.name, base.split
        self.labels = None if base.labels is None else np.asarray(base.labels)[: self.n]
        self.classnames = base.classnames

    def __len__(self) -> int:
        return self.n

    def image(self, i: int) -> Image.Image:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.base.image(i)

    def images(self, start: int, stop: int) -> list[Image.Image]:
        return self.base.images(start, min(stop, self.n))

    def describe(self) -> dict:
        return {**self.base.describe(), "n": self.n, "of_n": len(self.base)}


def spread_index(n: int, of_n: int) -> np.ndarray:
    """Rows of a dataset of ``of_n`` that :class:`SpreadRows` takes for ``n`` (n <= of_n):
    ``floor(i * of_n / n)``."""
    return (np.arange(n, dtype=np.int64) * of_n) // n


class SpreadRows(ImageDataset):
    """``n`` images of ``base`` spread evenly over it: row i is ``base`` row
    ``floor(i * len(base) / n)`` (all of ``base`` if it has at most ``n``), so a subset of a
    dataset stored class by class (ImageNet val) still covers every class."""

    def __init__(self, base: ImageDataset, n: int):
        self.base = base
        self.n = min(int(n), len(base))
        self.index = spread_index(self.n, len(base))
        self.name, self.split = base.name, base.split
        self.labels = None if base.labels is None else np.asarray(base.labels)[self.index]
        self.classnames = base.classnames

    def __len__(self) -> int:
        return self.n

    def image(self, i: int) -> Image.Image:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.base.image(int(self.index[i]))

    def images(self, start: int, stop: int) -> list[Image.Image]:
        return [self.image(i) for i in range(start, min(stop, self.n))]

    def describe(self) -> dict:
        return {**self.base.describe(), "n": self.n, "of_n": len(self.base), "subset": "spread"}


def parse_rows(rows: str | int | None) -> int | None:
    """``"all"``/None -> None; ``"500"``/500 -> 500."""
    if rows is None or rows == "all":
        return None
    n = int(rows)
    if n < 1:
        raise ValueError(f"rows must be 'all' or a positive number, got {rows!r}")
    return n


def open_view(
    name: str,
    split: str,
    *,
    results: str | os.PathLike,
    resources: str | os.PathLike,
    image_key: str = "images",
    rows: str | int | None = None,
    blue_factor: float = 0.0,
) -> ImageDataset:
    """Dataset ``name``/``split`` seen through ``image_key`` (a stored array of a toy dataset,
    else the colour transform on the fly), cut to the first ``rows`` images."""
    from .registry import TOY_DATASETS, open_dataset

    if image_key not in VIEW_KEYS:
        raise ValueError(f"unknown image view {image_key!r}; one of {VIEW_KEYS}")
    if name in TOY_DATASETS:
        try:
            ds = open_dataset(name, split, results=results, resources=resources,
                              image_key=image_key)
        except KeyError:
            if image_key == "images":
                raise
            base = open_dataset(name, split, results=results, resources=resources)
            ds = TransformedView(base, image_key, blue_factor)
    else:
        ds = open_dataset(name, split, results=results, resources=resources)
        if image_key != "images":
            ds = TransformedView(ds, image_key, blue_factor)
    n = parse_rows(rows)
    if n is not None and n > len(ds):
        log.warning("%s/%s has %d images, fewer than the %d asked for: using all %d (recorded "
                    "as n and of_n in the outputs' provenance)", name, split, len(ds), n,
                    len(ds))
    return ds if n is None else FirstRows(ds, n)
