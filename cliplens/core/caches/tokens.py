"""Token-grid caches: the patch tokens of one vision-tower layer, per image, in HDF5.

Which tokens
------------
``layer`` counts like transformers' ``hidden_states``: ``0`` is the input of the first block
(patch + position embeddings; after ``ln_pre`` in open_clip), ``k`` the output of block ``k``
(1-based), negative values count from the end, so ``-1`` is the output of the last block (before
any final LayerNorm) and the default ``-2`` the output after the second-to-last block -- for a
12-block SigLIP exactly ``vision_model(..., output_hidden_states=True).hidden_states[-2]``, the
feature of study 000.  Only patch tokens are kept (open_clip's and CLIP's class token and any other
prefix token are dropped; NaFlex padding is dropped), in the row-major order of the patch grid:
a cache row is [P, D] with P = gh * gw.  Tokens are stored as computed (not L2-normalised); the
reconstructor normalises them where it consumes them.

The tokens are read by :meth:`VisionTower.hidden_tokens <cliplens.core.models.towers.VisionTower.hidden_tokens>`:
a forward hook on the block whose output is wanted stops the forward pass there, so later
blocks and heads never run.

Files
-----
A token cache is a row cache (:mod:`cliplens.core.caches.rows`) whose row array
``/embeddings`` holds token grids [n, P, D],
``/index`` and, where the dataset has labels, ``/labels``.  Provenance: the model's (spec,
preprocessing, weights hash, ...), the dataset's (name, split, n, image_key), ``kind: tokens``,
``layer`` (as asked), ``block`` (hidden-state index it resolved to), ``grid`` [gh, gw],
``token_dim``, ``dtype``, the row range and library versions.

Naming (see ``rules/inversion.smk``)::

    {results}/cache/{model}/{dataset}/{split}/tokens/{image_key}.layer{layer}.{rows}.h5
    {results}/cache/{model}/{dataset}/{split}/tokens/shards/
        {image_key}.layer{layer}.{rows}.{i}-of-{n}.h5

``image_key`` picks the image view: ``images`` or, for study 000's colour operators,
``images_rb_swap``, ``images_b_suppressed``, ``images_gray`` (stored arrays of ``toy-colour-ops``;
for other datasets the same transforms are applied on the fly, :mod:`cliplens.core.data.views`);
``rows`` is ``all`` or a number N (the first N images of the split).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from ..data.base import ImageDataset
from ..models.base import ClipModel
from ..models.blocks import resolve_layer
from .rows import RowCache, extract_rows

#: the row array of a token cache
ROW_KEY = "embeddings"


def extract_tokens(
    model: ClipModel,
    dataset: ImageDataset,
    out_path: str | os.PathLike,
    *,
    layer: int = -2,
    start: int = 0,
    stop: int | None = None,
    batch_size: int = 64,
    dtype: str = "float16",
    progress: bool = True,
) -> dict[str, Any]:
    """Token grids of images ``start .. stop-1`` of ``dataset`` into an HDF5 cache
    (:func:`~cliplens.core.caches.rows.extract_rows`): per batch ``t =
    model.tower.hidden_tokens(x, layer)`` [B, P, D] into ``/embeddings`` [stop-start, P, D].
    Returns the provenance."""
    tower = model.tower
    blocks = tower.n_blocks
    gh, gw = tower.grid()
    return extract_rows(
        model, dataset, out_path, lambda pixels: {ROW_KEY: tower.hidden_tokens(pixels, layer)},
        kind="tokens", start=start, stop=stop, batch_size=batch_size, dtype=dtype,
        provenance={"layer": int(layer), "block": resolve_layer(int(layer), blocks),
                    "blocks": blocks, "grid": [gh, gw]},
        describe=lambda arrays: {"token_dim": int(arrays[ROW_KEY].shape[-1])},
        desc=f"tokens {model.spec}", progress=progress)


class TokenCache(RowCache):
    """A token cache opened for reading: ``len``, ``shape`` [n, P, D], ``grid``, ``provenance``,
    ``read(rows)`` -> float32 [len(rows), P, D] (any order, duplicates allowed) and ``load()``
    (everything, in the stored dtype, kept for later ``read`` calls)."""

    def __init__(self, path: str | os.PathLike, expected: Mapping[str, Any] | None = None):
        super().__init__(path, "tokens", expected)
        self.shape = tuple(self.array(ROW_KEY).shape)
        self.grid = tuple(self.provenance["grid"])
        self._mem: np.ndarray | None = None

    def load(self, name: str = ROW_KEY) -> np.ndarray:
        if name != ROW_KEY:
            return super().load(name)
        if self._mem is None:
            self._mem = super().load(ROW_KEY)
        return self._mem

    def read(self, rows: Sequence[int] | np.ndarray, name: str = ROW_KEY) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if name == ROW_KEY and self._mem is not None:
            return self._mem[rows].astype(np.float32)
        return super().read(name, rows).astype(np.float32)

    def __enter__(self) -> "TokenCache":
        return self


def open_tokens(path: str | os.PathLike, expected: Mapping[str, Any] | None = None) -> TokenCache:
    """Open a token cache (refusing incomplete files, missing shards and provenance that
    disagrees with ``expected``)."""
    return TokenCache(path, expected)


def read_tokens(path: str | os.PathLike, expected: Mapping[str, Any] | None = None
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """(tokens [n, P, D] in the stored dtype, provenance) of a whole cache."""
    with open_tokens(path, expected) as tc:
        return tc.load(), tc.provenance
