"""Embedding caches: one HDF5 file of image embeddings per (model, dataset, split).

Layout of a cache file (a shard or a gathered cache)::

    /embeddings   float16|float32 [n, D]   chunked along rows
    /labels       int64 [n]                 (only when the dataset has labels)
    /index        int64 [n]                 row ids in the source dataset
    attrs: provenance (model.provenance() | dataset.describe() | dtype, kind, start, stop,
           rows, normalize, library versions), completion mark (set last)

Extraction is sharded: shard ``i`` of ``n`` covers the contiguous rows :func:`shard_bounds`
gives, and :func:`gather_shards` joins the shards into one file whose datasets are HDF5
*virtual datasets* (VDS) mapping row blocks to the shard files.  The VDS stores the shard paths
relative to the gathered file, and HDF5 resolves a relative source name against the directory
of the file holding the VDS, so the cache folder (gathered file + ``shards/``) can be moved as a
whole.  A sharded run and an unsharded run give identical arrays: each row is computed from the
same image by the same model in the same row order, and when shards are cut on batch
boundaries (``shard_bounds(n, k, i, align=batch_size)``, as the workflow does) every row is even
encoded in the very same batch, so kernels whose rounding depends on the batch composition
cannot make a difference either.

A VDS silently returns its fill value where a source file is missing, so :func:`open_cache`
checks that every source exists and is complete before reading; fill values are NaN for
embeddings and -1 for labels/index, so an unmapped row could never pass for data.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from .data.base import ImageDataset
from .io import (
    COMPLETE_ATTR,
    IncompleteFileError,
    ProvenanceError,
    atomic_path,
    check_provenance,
    get_provenance,
    library_versions,
    mark_complete,
    set_provenance,
)
from .models.base import ClipModel

DTYPES = ("float16", "float32")
#: provenance keys that legitimately differ between the shards of one cache.
ROW_KEYS = ("start", "stop", "rows")
#: target size of one HDF5 chunk of embeddings (rows x D x itemsize), in bytes.
CHUNK_BYTES = 1 << 20


class ShardError(ValueError):
    """Shards given to :func:`gather_shards` do not form one cache (mixed provenance, gap,
    overlap or missing rows)."""


def shard_bounds(n: int, n_shards: int, i: int, align: int = 1) -> tuple[int, int]:
    """Row range ``[start, stop)`` of shard ``i`` of ``n_shards`` over ``n`` rows.

    Shards are contiguous, in order and cover ``0 .. n`` exactly.  The rows are cut into
    ``m = ceil(n / align)`` blocks of ``align`` rows (the last may be shorter) and the blocks are
    dealt out evenly: the first ``m mod n_shards`` shards get ``ceil(m / n_shards)`` blocks, the
    rest ``floor(m / n_shards)``.  With ``align=1`` shard sizes differ by at most one row; with
    ``align = batch_size`` every shard boundary is a multiple of the batch size, so a sharded
    extraction runs exactly the batches an unsharded one runs (see :func:`batch_bounds`) and
    gives bitwise identical embeddings even where a kernel's rounding depends on the batch.
    With more shards than blocks the last shards are empty.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    if not 0 <= i < n_shards:
        raise ValueError(f"shard index {i} out of range for {n_shards} shards")
    blocks = -(-n // align)
    base, extra = divmod(blocks, n_shards)
    first = i * base + min(i, extra)
    last = first + base + (1 if i < extra else 0)
    return min(first * align, n), min(last * align, n)


def checked_rows(start: int, stop: int | None, total: int, dtype: str) -> int:
    """Validate an extraction request and return ``stop`` (None = ``total``): ``dtype`` one of
    :data:`DTYPES` and ``0 <= start <= stop <= total``; ValueError naming what is wrong."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    stop = total if stop is None else stop
    if not 0 <= start <= stop <= total:
        raise ValueError(f"row range [{start}, {stop}) is not inside the dataset's {total} rows")
    return stop


def batch_bounds(start: int, stop: int, batch_size: int) -> list[tuple[int, int]]:
    """Batches ``[a, b)`` covering ``start .. stop``, cut on the global grid of multiples of
    ``batch_size``: row ``r`` is always encoded together with the rows of
    ``[floor(r / B) * B, (floor(r / B) + 1) * B)`` that lie inside ``[start, stop)``."""
    edges = [start, *range((start // batch_size + 1) * batch_size, stop, batch_size), stop]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def prefetched_batches(dataset: ImageDataset, model: ClipModel, bounds: Sequence[tuple[int, int]]):
    """Yield ``((a, b), pixels)`` for each row range in ``bounds``, where ``pixels`` =
    ``model.preprocess(dataset.images(a, b))`` [b-a, 3, S, S].  The next batch is read and
    preprocessed in a background thread while the caller encodes the current one, so at most two
    batches are in memory."""

    def load(ab: tuple[int, int]) -> torch.Tensor:
        return model.preprocess(dataset.images(*ab))

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, bounds[0]) if bounds else None
        for k, ab in enumerate(bounds):
            pixels = pending.result()
            if k + 1 < len(bounds):
                pending = pool.submit(load, bounds[k + 1])
            yield ab, pixels


def _chunk_rows(n: int, dim: int, itemsize: int) -> int:
    return max(1, min(n, CHUNK_BYTES // max(1, dim * itemsize)))


def _create_rows(h5: h5py.File, name: str, shape: tuple, dtype, fill=None) -> h5py.Dataset:
    """A dataset chunked along rows (contiguous when empty, since HDF5 chunks must be > 0)."""
    if shape[0] == 0:
        return h5.create_dataset(name, shape=shape, dtype=dtype)
    row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    rows = _chunk_rows(shape[0], row, np.dtype(dtype).itemsize)
    return h5.create_dataset(name, shape=shape, dtype=dtype, chunks=(rows,) + tuple(shape[1:]),
                             fillvalue=fill)


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
    """Embed images ``start .. stop-1`` of ``dataset`` with ``model`` into an HDF5 cache.

    Batches are cut on the global grid of multiples of ``batch_size`` (:func:`batch_bounds`), so
    shards cut by ``shard_bounds(..., align=batch_size)`` repeat the unsharded run's batches.
    For each batch ``[a, b)``: ``x = model.preprocess(dataset.images(a, b))`` ([B, 3, S, S]),
    ``e = model.encode_image(x, normalize)`` ([B, D]), cast to ``dtype`` and written to rows
    ``a-start .. b-start`` of a preallocated ``/embeddings`` [stop-start, D], so memory holds at
    most two batches (the next batch is read and preprocessed in a background thread while the
    current one is encoded) whatever the dataset size.  ``/labels`` (if the dataset has labels)
    and ``/index`` (= ``arange(start, stop)``) are written alongside.  The file is written
    under a temporary name and renamed into place; the completion mark is set last.

    Returns the provenance written to the file.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = len(dataset)
    stop = checked_rows(start, stop, total, dtype)
    n = stop - start
    provenance = {
        **model.provenance(),
        **dataset.describe(),
        "kind": "embeddings",
        "dtype": dtype,
        "normalize": bool(normalize),
        "start": int(start),
        "stop": int(stop),
        "rows": int(n),
        "library_versions": library_versions(),
    }
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != total:
            raise ValueError(f"dataset has {total} images but {len(labels)} labels")
    dim = int(model.embed_dim)
    device = model.device
    bounds = batch_bounds(start, stop, batch_size)

    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as h5:
        set_provenance(h5, provenance)
        emb = _create_rows(h5, "embeddings", (n, dim), dtype, fill=np.nan)
        h5.create_dataset("index", data=np.arange(start, stop, dtype=np.int64))
        if labels is not None:
            h5.create_dataset("labels", data=labels[start:stop].astype(np.int64))
        bar = tqdm(total=n, unit="img", desc=f"embed {provenance.get('model', '?')}",
                   disable=not progress, mininterval=2.0)
        with torch.inference_mode():
            for (a, b), pixels in prefetched_batches(dataset, model, bounds):
                out = model.encode_image(pixels.to(device), normalize=normalize)
                if tuple(out.shape) != (b - a, dim):
                    raise RuntimeError(
                        f"{provenance.get('model')} returned embeddings of shape "
                        f"{tuple(out.shape)} for {b - a} images; expected ({b - a}, {dim})"
                    )
                emb[a - start : b - start] = out.float().cpu().numpy().astype(dtype)
                bar.update(b - a)
        bar.close()
        mark_complete(h5)
    return provenance


def _shard_info(path: Path) -> dict[str, Any]:
    prov = check_provenance(path, {})  # refuses incomplete shards
    with h5py.File(path, "r") as h5:
        if "embeddings" not in h5 or "index" not in h5:
            raise ShardError(f"{path} is not an embeddings cache (no /embeddings or /index)")
        rows = h5["index"].shape[0]
        # every top-level dataset with one entry per row is gathered (embeddings, index,
        # labels, and e.g. the per-term arrays of a decomposition cache)
        arrays = {name: (tuple(d.shape[1:]), d.dtype) for name, d in h5.items()
                  if isinstance(d, h5py.Dataset) and d.ndim >= 1 and d.shape[0] == rows}
        info = {
            "path": path,
            "prov": prov,
            "shape": h5["embeddings"].shape,
            "dtype": h5["embeddings"].dtype,
            "has_labels": "labels" in h5,
            "arrays": arrays,
        }
    if info["shape"][0] != prov.get("stop", -1) - prov.get("start", 0):
        raise ShardError(f"{path}: {info['shape'][0]} rows stored but provenance says "
                         f"[{prov.get('start')}, {prov.get('stop')})")
    return info


def gather_shards(
    shard_paths: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    *,
    require_complete: bool = True,
) -> dict[str, Any]:
    """Join shard caches into one file of HDF5 virtual datasets; return its provenance.

    The shards must agree on every provenance key except the row range (same model, dataset,
    split, dtype, normalisation, library versions, ...), and their row ranges, sorted, must be
    contiguous and non-overlapping: ``stop_k == start_{k+1}``.  With ``require_complete`` they
    must also cover the whole dataset, ``[0, n)`` with ``n`` the dataset size in the provenance.
    Otherwise :class:`ShardError` names the offending shard.  Every top-level array with one
    entry per row (``/embeddings``, ``/labels``, ``/index``, and any other, such as the terms of
    a decomposition cache) of the result maps rows ``start_k .. stop_k`` to shard ``k``, by a
    path relative to ``out_path``'s folder, so the folder can be moved as a whole.
    """
    out_path = Path(out_path)
    if not shard_paths:
        raise ShardError("no shards to gather")
    infos = sorted((_shard_info(Path(p)) for p in shard_paths),
                   key=lambda s: (s["prov"]["start"], s["prov"]["stop"]))
    ref = infos[0]

    def common(prov: Mapping) -> dict:
        return {k: v for k, v in prov.items() if k not in ROW_KEYS}

    for s in infos[1:]:
        a, b = common(ref["prov"]), common(s["prov"])
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            details = "; ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in diff)
            raise ShardError(f"shards {ref['path']} and {s['path']} come from different runs "
                             f"({details}); rerun the odd shard")
        if s["arrays"] != ref["arrays"]:
            raise ShardError(f"shards {ref['path']} and {s['path']} differ in their arrays, "
                             "shapes, dtypes or labels")
    for prev, nxt in zip(infos, infos[1:]):
        p, q = prev["prov"]["stop"], nxt["prov"]["start"]
        if q > p:
            raise ShardError(f"gap: rows [{p}, {q}) are in no shard (between {prev['path']} "
                             f"and {nxt['path']})")
        if q < p:
            raise ShardError(f"overlap: rows [{q}, {p}) are in both {prev['path']} and "
                             f"{nxt['path']}")
    start, stop = infos[0]["prov"]["start"], infos[-1]["prov"]["stop"]
    total = ref["prov"].get("n")
    if require_complete and total is not None and (start, stop) != (0, total):
        raise ShardError(f"shards cover rows [{start}, {stop}) of a dataset of {total}: "
                         "some shards are missing")
    n = stop - start
    folder = out_path.parent.resolve()
    rel = [os.path.relpath(Path(s["path"]).resolve(), folder) for s in infos]

    layouts = {
        name: (h5py.VirtualLayout((n,) + shape, dtype),
               np.nan if np.issubdtype(dtype, np.floating) else -1)
        for name, (shape, dtype) in ref["arrays"].items()
    }
    for s, r in zip(infos, rel):
        a, b = s["prov"]["start"] - start, s["prov"]["stop"] - start
        if a == b:
            continue  # an empty shard maps nothing
        for name, (layout, _) in layouts.items():
            layout[a:b] = h5py.VirtualSource(r, name, shape=(b - a,) + ref["arrays"][name][0])

    provenance = {**common(ref["prov"]), "start": int(start), "stop": int(stop), "rows": int(n),
                  "shards": rel}
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as h5:
        set_provenance(h5, provenance)
        for name, (layout, fill) in layouts.items():
            h5.create_virtual_dataset(name, layout, fillvalue=fill)
        mark_complete(h5)
    return provenance


def _check_sources(path: Path, h5: h5py.File) -> None:
    """Every source file of every virtual dataset in ``h5`` exists and is complete."""
    folder = path.parent
    seen: set[str] = set()
    for name, d in h5.items():
        if not isinstance(d, h5py.Dataset) or not d.is_virtual:
            continue
        for src in d.virtual_sources():
            if src.file_name in seen or src.file_name == ".":
                continue
            seen.add(src.file_name)
            full = Path(src.file_name)
            full = full if full.is_absolute() else folder / full
            if not full.exists():
                raise IncompleteFileError(
                    f"{path} maps rows to {full}, which does not exist: the shards must stay "
                    "beside the gathered cache (move the whole folder), or delete the cache "
                    "and rerun"
                )
            with h5py.File(full, "r") as src_h5:
                if not bool(src_h5.attrs.get(COMPLETE_ATTR, False)):
                    raise IncompleteFileError(f"shard {full} of {path} is incomplete; "
                                              "delete it and rerun")


def open_cache(
    path: str | os.PathLike, expected: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read a cache: ``(embeddings [n, D], labels [n] or None, provenance)``.

    Refuses (``IncompleteFileError``) a file without the completion mark or a gathered file
    whose shard files are missing or incomplete, and (``ProvenanceError``) a file whose
    provenance disagrees with ``expected`` on any key (e.g. ``{"model": spec, "dataset":
    "toy", "split": "test", "dtype": "float16"}``).  Embeddings keep their stored dtype.
    """
    path = Path(path)
    prov = check_provenance(path, expected or {})
    if prov.get("kind", "embeddings") != "embeddings":
        raise ProvenanceError(f"{path} holds {prov.get('kind')!r}, not embeddings")
    with h5py.File(path, "r") as h5:
        _check_sources(path, h5)
        emb = h5["embeddings"][()]
        labels = h5["labels"][()] if "labels" in h5 else None
        index = h5["index"][()] if "index" in h5 else None
    if index is not None and "start" in prov and "stop" in prov:
        if not np.array_equal(index, np.arange(prov["start"], prov["stop"])):
            raise IncompleteFileError(f"{path}: row index is not {prov['start']}..{prov['stop']}-1; "
                                      "the cache is damaged, delete it and rerun")
    return emb, labels, prov


def cache_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance of a cache file without reading its arrays (no completeness check)."""
    with h5py.File(path, "r") as h5:
        return get_provenance(h5)
