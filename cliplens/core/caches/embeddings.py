"""Embedding caches: the image embeddings of one (model, dataset, split), one row per image.

``/embeddings`` float16|float32 [n, D] is ``model.encode_image(preprocess(image), normalize)``;
provenance adds ``kind: embeddings`` and ``normalize``.  Written and read through
:mod:`cliplens.core.caches.rows` (sharded, gathered, checked).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from ..data.base import ImageDataset
from ..models.base import ClipModel
from .rows import RowCache, extract_rows


def extract_embeddings(
    model: ClipModel,
    dataset: ImageDataset,
    out_path: str | os.PathLike,
    *,
    start: int = 0,
    stop: int | None = None,
    batch_size: int = 256,
    dtype: str = "float16",
    normalize: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed images ``start .. stop-1`` of ``dataset`` with ``model`` into an HDF5 cache
    (:func:`~cliplens.core.caches.rows.extract_rows`): ``/embeddings`` [stop-start, D] with
    ``e = model.encode_image(x, normalize)`` per batch.  Returns the provenance."""
    dim = int(model.embed_dim)

    def compute(pixels):
        out = model.encode_image(pixels, normalize=normalize)
        if tuple(out.shape) != (len(pixels), dim):
            raise RuntimeError(f"{model.spec} returned embeddings of shape {tuple(out.shape)} "
                               f"for {len(pixels)} images; expected ({len(pixels)}, {dim})")
        return {"embeddings": out}

    return extract_rows(model, dataset, out_path, compute, kind="embeddings", start=start,
                        stop=stop, batch_size=batch_size, dtype=dtype,
                        provenance={"normalize": bool(normalize)},
                        desc=f"embed {model.spec}", progress=progress)


def open_cache(
    path: str | os.PathLike, expected: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read an embeddings cache: ``(embeddings [n, D], labels [n] or None, provenance)``.

    Refuses incomplete files, missing shards, a damaged row index and provenance that disagrees
    with ``expected`` (see :class:`~cliplens.core.caches.rows.RowCache`).  Embeddings keep their
    stored dtype."""
    with RowCache(path, "embeddings", expected) as cache:
        emb = cache.load("embeddings")
        labels = cache.load("labels") if "labels" in cache else None
        cache.check_index()
        return emb, labels, cache.provenance
