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


class RowSubset(ImageDataset):
    """Rows ``index`` [n] (increasing) of ``base``; ``subset`` names how they were chosen in
    :meth:`describe` (with ``n`` and ``of_n``).  Contiguous rows are read with one
    ``base.images`` call."""

    def __init__(self, base: ImageDataset, index: np.ndarray, subset: str | None = None):
        self.base, self.index, self.subset = base, np.asarray(index, dtype=np.int64), subset
        self.n = len(self.index)
        self.name, self.split = base.name, base.split
        self.labels = None if base.labels is None else np.asarray(base.labels)[self.index]
        self.classnames = base.classnames
        if hasattr(base, "factor_labels"):  # the toy world's factors, row for row
            self.factor_labels = {k: np.asarray(v)[self.index]
                                  for k, v in base.factor_labels.items()}

    def __len__(self) -> int:
        return self.n

    def image(self, i: int) -> Image.Image:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.base.image(int(self.index[i]))

    def mask(self, i: int) -> np.ndarray:
        """The base dataset's mask of row ``i`` (datasets with masks only)."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.base.mask(int(self.index[i]))

    def class_mask(self, i: int) -> np.ndarray:
        """The base dataset's class mask of row ``i`` (datasets with class masks only)."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.base.class_mask(int(self.index[i]))

    def images(self, start: int, stop: int) -> list[Image.Image]:
        rows = self.index[start:min(stop, self.n)]
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1:
            return self.base.images(int(rows[0]), int(rows[-1]) + 1)
        return [self.base.image(int(r)) for r in rows]

    def describe(self) -> dict:
        out = {**self.base.describe(), "n": self.n, "of_n": len(self.base)}
        return out if self.subset is None else {**out, "subset": self.subset}


class FirstRows(RowSubset):
    """The first ``n`` images of ``base`` (all if it has fewer)."""

    def __init__(self, base: ImageDataset, n: int):
        super().__init__(base, np.arange(min(int(n), len(base))))


def spread_index(n: int, of_n: int) -> np.ndarray:
    """Rows of a dataset of ``of_n`` that :class:`SpreadRows` takes for ``n`` (n <= of_n):
    ``floor(i * of_n / n)``."""
    return (np.arange(n, dtype=np.int64) * of_n) // n


class SpreadRows(RowSubset):
    """``n`` images of ``base`` spread evenly over it: row i is ``base`` row
    ``floor(i * len(base) / n)`` (all of ``base`` if it has at most ``n``), so a subset of a
    dataset stored class by class (ImageNet val) still covers every class."""

    def __init__(self, base: ImageDataset, n: int):
        super().__init__(base, spread_index(min(int(n), len(base)), len(base)), "spread")


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
