"""Reading and writing the toy world's HDF5 files.

Layout of ``{dataset}.h5`` (one file per toy dataset, all splits inside)::

    /{split}/images          uint8 [N, S, S, 3], chunked by image, gzip
    /{split}/masks           bool  [N, S, S]   (object pixels)
    /{split}/labels/{key}    int16 [N]         (shape, colour, position, size, background, ...)
    /{split}/captions_rich   bytes [N]         (UTF-8, fixed length)
    /{split}/captions_poor   bytes [N]
    /{split}/images_*        uint8 [N, S, S, 3] (toy-colour-ops: rb_swap, b_suppressed, gray)
    attrs: factors (JSON: factor -> value names), provenance, completion mark

Every dataset carries HDF5's Fletcher-32 checksum, so a damaged byte fails the read with a
:class:`~cliplens.core.io.CorruptFileError` naming the file.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import h5py
import numpy as np
from PIL import Image

from ..toy import world
from ..io import (atomic_path, check_provenance, create_checked, mark_complete, open_h5, read_text,
                  reading, set_provenance, text_array)
from .base import ImageDataset, to_pil


def write_toy_dataset(
    path: str | os.PathLike, splits: Mapping[str, world.Split], provenance: Mapping
) -> None:
    """Write generated splits to ``path`` atomically, with provenance and a completion mark."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        factors = dict(world.FACTORS)
        h5.attrs["factors"] = json.dumps({k: list(v) for k, v in factors.items()})
        set_provenance(h5, provenance)
        for name, part in splits.items():
            g = h5.create_group(name)
            n, s = len(part), part.images.shape[1]
            chunk = (min(n, 256), s, s, 3)
            create_checked(g, "images", part.images, chunks=chunk, compression="gzip",
                           compression_opts=1)
            for key, arr in part.extra_images.items():
                create_checked(g, key, arr, chunks=chunk, compression="gzip", compression_opts=1)
            create_checked(g, "masks", part.masks, chunks=chunk[:3], compression="gzip",
                           compression_opts=1)
            lg = g.create_group("labels")
            for key, arr in part.labels.items():
                create_checked(lg, key, np.asarray(arr, np.int16))
            for key in ("captions_rich", "captions_poor"):
                create_checked(g, key, text_array(getattr(part, key)), compression="gzip",
                               compression_opts=1)
        mark_complete(h5)


def read_split(path: str | os.PathLike, split: str, keys=("images", "masks")) -> dict:
    """Load whole arrays of one split into memory: ``keys`` plus ``labels`` (dict) and captions."""
    check_provenance(path, {})
    with open_h5(path) as h5:
        if split not in h5:
            raise KeyError(f"{path} has no split {split!r}; it has {sorted(h5.keys())}")
        g = h5[split]
        with reading(path, split):
            out = {k: g[k][()] for k in keys}
            out["labels"] = {k: g["labels"][k][()] for k in g["labels"]}
            for c in ("captions_rich", "captions_poor"):
                out[c] = read_text(g[c][()])
    return out


class ToyDataset(ImageDataset):
    """A split of a toy HDF5 file as an :class:`ImageDataset`.

    ``label_key`` picks the factor served as ``labels`` (``shape``, ``colour``, ``position``,
    ``size``, ``background``, ``object`` = colour x shape, or a derived key such as
    ``spurious_class``); ``image_key`` picks the image array (``images`` or e.g. ``images_gray``).
    Images are read once into memory: toy splits are small.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str,
        name: str = "toy",
        label_key: str | None = None,
        image_key: str = "images",
    ):
        check_provenance(path, {})
        self.path, self.name, self.split, self.image_key = str(path), name, split, image_key
        with open_h5(path) as h5:
            if split not in h5:
                raise KeyError(f"{path} has no split {split!r}; it has {sorted(h5.keys())}")
            g = h5[split]
            if image_key not in g:
                raise KeyError(f"{path}/{split} has no image array {image_key!r}")
            with reading(path, f"{split}/{image_key}"):
                self._images = g[image_key][()]
                self.factor_labels = {k: g["labels"][k][()] for k in g["labels"]}
        self.label_key = label_key
        if label_key is None:
            self.labels, self.classnames = None, None
        elif label_key == "object":
            self.labels = world.object_label(
                self.factor_labels["colour"], self.factor_labels["shape"]
            )
            self.classnames = world.classnames("object")
        elif label_key in world.FACTORS:
            self.labels = self.factor_labels[label_key].astype(np.int64)
            self.classnames = world.classnames(label_key)
        elif label_key in self.factor_labels:
            self.labels = self.factor_labels[label_key].astype(np.int64)
            self.classnames = None
        else:
            raise KeyError(f"{path}/{split} has no label {label_key!r}")

    def __len__(self) -> int:
        return len(self._images)

    def array(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """uint8 images [n, S, S, 3]."""
        return self._images[start:stop]

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self._images[i])

    def images(self, start: int, stop: int) -> list[Image.Image]:
        return to_pil(self._images[start:stop])

    def mask(self, i: int) -> np.ndarray:
        """The object's pixel mask of image ``i``, bool [S, S] (the split's masks are read on
        the first call)."""
        if getattr(self, "_masks", None) is None:
            with open_h5(self.path) as h5, reading(self.path, f"{self.split}/masks"):
                if "masks" not in h5[self.split]:
                    raise KeyError(f"{self.path}/{self.split} has no masks")
                self._masks = h5[self.split]["masks"][()]
        return self._masks[i].astype(bool)

    def describe(self) -> dict:
        return {"dataset": self.name, "split": self.split, "n": len(self),
                "image_key": self.image_key}
