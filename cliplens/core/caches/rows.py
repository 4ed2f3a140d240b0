"""Row caches: every per-image array cliplens computes (embeddings, patch tokens, decompositions,
the coming neuron activations) is written by :func:`extract_rows` and read by :class:`RowCache`.

Layout of a cache file (a shard or a gathered cache)::

    /{name}       float16|float32 [n, ...]  one row array per name the job computes, chunked
                                            along rows (e.g. /embeddings [n, D])
    /labels       int64 [n]                 (only when the dataset has labels)
    /index        int64 [n]                 row ids in the source dataset
    attrs: provenance (model.provenance() | dataset.describe() | kind, dtype, start, stop,
           rows, library versions, bounds = {name: [min, max]} of every float array, and what
           the kind adds), completion mark (set last)

Every dataset carries HDF5's Fletcher-32 checksum (:func:`~cliplens.core.io.create_checked`):
a flipped byte fails the read.  Reads through :class:`RowCache` also refuse NaN, infinities and
values outside the recorded bounds (an edit that rewrote a value with a valid checksum).

Extraction is sharded: shard ``i`` of ``n`` covers the contiguous rows :func:`shard_bounds`
gives, and :func:`gather_shards` joins the shards into one file whose datasets are HDF5
*virtual datasets* (VDS) mapping row blocks to the shard files.  The VDS stores the shard paths
relative to the gathered file, and HDF5 resolves a relative source name against the directory
of the file holding the VDS, so the cache folder (gathered file + ``shards/``) can be moved as a
whole.  A sharded run and an unsharded run give identical arrays: each row is computed from the
same image by the same model in the same row order, and when shards are cut on batch
boundaries (``shard_bounds(n, k, i, align=batch_size)``, as the workflow does) every row is even
computed in the very same batch, so kernels whose rounding depends on the batch composition
cannot make a difference either.

A VDS silently returns its fill value where a source file is missing, so :class:`RowCache`
checks that every source exists and is complete before reading; fill values are NaN for
float arrays and -1 for labels/index, so an unmapped row could never pass for data.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import h5py
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.base import ImageDataset
from ..io import (
    COMPLETE_ATTR,
    CorruptFileError,
    IncompleteFileError,
    ProvenanceError,
    atomic_path,
    check_provenance,
    check_values,
    create_checked,
    get_provenance,
    library_versions,
    mark_complete,
    open_h5,
    reading,
    rebuild_hint,
    set_provenance,
    value_bounds,
)
from ..models.base import ClipModel

DTYPES = ("float16", "float32")
#: provenance keys that legitimately differ between the shards of one cache.
ROW_KEYS = ("start", "stop", "rows", "bounds")
#: target size of one HDF5 chunk of a row array (rows x row size x itemsize), in bytes.
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


def create_rows(h5: h5py.File, name: str, shape: tuple, dtype, fill=None) -> h5py.Dataset:
    """A checksummed dataset chunked along rows (contiguous when empty: nothing to check)."""
    row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    rows = _chunk_rows(shape[0], row, np.dtype(dtype).itemsize)
    return create_checked(h5, name, shape=shape, dtype=dtype,
                          chunks=(rows,) + tuple(shape[1:]), fillvalue=fill)

#: what a row job computes for one batch: pixels [B, 3, S, S] -> {array name: [B, ...]}
RowFn = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


def extract_rows(
    model: ClipModel,
    dataset: ImageDataset,
    out_path: str | os.PathLike,
    compute: RowFn,
    *,
    kind: str,
    start: int = 0,
    stop: int | None = None,
    batch_size: int = 256,
    dtype: str = "float16",
    provenance: Mapping[str, Any] | None = None,
    describe: Callable[[Mapping[str, np.ndarray]], Mapping[str, Any]] | None = None,
    desc: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Compute rows ``start .. stop-1`` of ``dataset`` with ``compute`` into one HDF5 cache file.

    For each batch ``[a, b)`` (cut on the global grid of multiples of ``batch_size``,
    :func:`batch_bounds`, so shards cut by ``shard_bounds(..., align=batch_size)`` repeat the
    unsharded run's batches): ``x = model.preprocess(dataset.images(a, b))`` [B, 3, S, S] on the
    model's device, ``out = compute(x)``, and each ``out[name]`` [B, ...] is cast to ``dtype``
    and written to rows ``a-start .. b-start`` of ``/name`` (created on the first batch, filled
    with NaN until written).  The next batch is read and preprocessed in a background thread, so
    memory holds at most two batches whatever the dataset size; computation runs under
    ``torch.inference_mode``.  ``/index`` (= ``arange(start, stop)``) and, if the dataset has
    labels, ``/labels`` are written alongside.  An empty row range runs ``compute`` on one blank
    image to learn the row shapes.

    Provenance: the model's, the dataset's, ``kind``, ``provenance``, the row range, ``dtype``,
    library versions, ``describe(first batch's arrays)`` and ``bounds`` (each float array's
    [min, max] as stored; a non-finite value computed raises ValueError).  Written under a
    temporary name and renamed into place; the completion mark is set last.  Returns the
    provenance.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = len(dataset)
    stop = checked_rows(start, stop, total, dtype)
    n = stop - start
    prov = {**model.provenance(), **dataset.describe(), "kind": kind, **dict(provenance or {}),
            "dtype": dtype, "start": int(start), "stop": int(stop), "rows": int(n),
            "library_versions": library_versions()}
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != total:
            raise ValueError(f"dataset has {total} images but {len(labels)} labels")
    device = model.device

    def host(out: Mapping[str, torch.Tensor], rows: int) -> dict[str, np.ndarray]:
        arrays = {}
        for name, v in out.items():
            if v.shape[0] != rows:
                raise RuntimeError(f"{prov.get('model')} computed {name} of shape "
                                   f"{tuple(v.shape)} for {rows} images")
            arrays[name] = v.float().cpu().numpy().astype(dtype)
        return arrays

    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as h5:
        create_checked(h5, "index", np.arange(start, stop, dtype=np.int64))
        if labels is not None:
            create_checked(h5, "labels", labels[start:stop].astype(np.int64))
        store: dict[str, h5py.Dataset] = {}
        bounds: dict[str, list[float]] = {}
        bar = tqdm(total=n, unit="img", desc=desc or f"{kind} {prov.get('model', '?')}",
                   disable=not progress, mininterval=2.0)
        with torch.inference_mode():
            if n == 0:  # shapes unknown without a forward pass: run one on a blank image
                probe = model.preprocess([Image.new("RGB", (model.image_size,) * 2)])
                first = host(compute(probe.to(device)), 1)
                for name, v in first.items():
                    store[name] = create_rows(h5, name, (0,) + v.shape[1:], dtype)
                prov.update(describe(first) if describe else {})
            for (a, b), pixels in prefetched_batches(dataset, model, batch_bounds(start, stop,
                                                                                   batch_size)):
                arrays = host(compute(pixels.to(device)), b - a)
                try:
                    value_bounds(arrays, into=bounds)
                except ValueError as err:
                    raise ValueError(f"{prov.get('model')} on rows [{a}, {b}) of "
                                     f"{prov.get('dataset')}: {err}") from None
                if not store:
                    for name, v in arrays.items():
                        store[name] = create_rows(h5, name, (n,) + v.shape[1:], dtype,
                                                  fill=np.nan)
                    prov.update(describe(arrays) if describe else {})
                for name, v in arrays.items():
                    store[name][a - start:b - start] = v
                bar.update(b - a)
        bar.close()
        prov["bounds"] = bounds
        set_provenance(h5, prov)
        mark_complete(h5)
    return prov


def _shard_info(path: Path) -> dict[str, Any]:
    prov = check_provenance(path, {})  # refuses incomplete shards
    with open_h5(path) as h5:
        if "index" not in h5:
            raise ShardError(f"{path} is not a row cache (no /index)")
        rows = h5["index"].shape[0]
        # every top-level dataset with one entry per row is gathered (index, labels and every
        # row array: embeddings, tokens, the terms of a decomposition, ...)
        arrays = {name: (tuple(d.shape[1:]), d.dtype) for name, d in h5.items()
                  if isinstance(d, h5py.Dataset) and d.ndim >= 1 and d.shape[0] == rows}
    if rows != prov.get("stop", -1) - prov.get("start", 0):
        raise ShardError(f"{path}: {rows} rows stored but provenance says "
                         f"[{prov.get('start')}, {prov.get('stop')})")
    return {"path": path, "prov": prov, "arrays": arrays}


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

    bounds: dict[str, list[float]] = {}
    for s in infos:
        for name, (lo, hi) in s["prov"].get("bounds", {}).items():
            old = bounds.get(name, [lo, hi])
            bounds[name] = [min(old[0], lo), max(old[1], hi)]
    provenance = {**common(ref["prov"]), "start": int(start), "stop": int(stop), "rows": int(n),
                  "shards": rel, "bounds": bounds}
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as h5:
        set_provenance(h5, provenance)
        for name, (layout, fill) in layouts.items():
            h5.create_virtual_dataset(name, layout, fillvalue=fill)
        mark_complete(h5)
    return provenance


def check_sources(path: Path, h5: h5py.File) -> None:
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
            with open_h5(full, rebuild_hint(full, path)) as src_h5:
                if not bool(src_h5.attrs.get(COMPLETE_ATTR, False)):
                    raise IncompleteFileError(f"shard {full} of {path} is incomplete; "
                                              "delete it and rerun")

class RowCache:
    """A row cache (shard or gathered file) opened for reading.

    Opening refuses (``IncompleteFileError``) a file without the completion mark or a gathered
    file whose shard files are missing or incomplete, and (``ProvenanceError``) a file of another
    ``kind`` or whose provenance disagrees with ``expected`` on any key (e.g. ``{"model": spec,
    "dataset": "toy", "split": "test"}``: a cache built for another model is refused).
    ``names`` lists its arrays; :meth:`read` returns rows of one (any order, duplicates
    allowed), :meth:`load` all of it, :meth:`layers` slices of an array along axis 1.  Use as a
    context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike, kind: str | None = None,
                 expected: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.provenance = check_provenance(self.path, expected or {})
        if kind is not None and self.provenance.get("kind", "embeddings") != kind:
            raise ProvenanceError(f"{self.path} holds {self.provenance.get('kind')!r}, not "
                                  f"{kind}")
        self._h5 = open_h5(self.path)
        self._bounds = self.provenance.get("bounds")
        try:
            check_sources(self.path, self._h5)
        except BaseException:
            self._h5.close()
            raise
        self.names = [k for k in self._h5 if isinstance(self._h5[k], h5py.Dataset)]

    def __len__(self) -> int:
        return int(self._h5["index"].shape[0])

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def array(self, name: str) -> h5py.Dataset:
        """The HDF5 dataset ``name`` (read lazily); KeyError naming the file if absent."""
        if name not in self.names:
            raise KeyError(f"{self.path} has no array {name!r} (it has {self.names})")
        return self._h5[name]

    def _sources(self, name: str):
        """(file path, dataset name) of each shard behind a gathered array ``name``."""
        for src in self._h5[name].virtual_sources():
            full = Path(src.file_name)
            yield (full if full.is_absolute() else self.path.parent / full), src.dset_name

    def chunk_rows(self, name: str) -> int:
        """Rows per HDF5 chunk of ``name`` (a gathered array: its first shard's), so reads can
        be aligned to the chunks; 1 for an array stored without chunks."""
        ds = self.array(name)
        chunks = ds.chunks
        if chunks is None and ds.is_virtual:
            path, dset = next(self._sources(name))
            with open_h5(path) as h5:
                chunks = h5[dset].chunks
        return int(chunks[0]) if chunks else 1

    def _get(self, name: str, read: Callable[[h5py.Dataset], np.ndarray]) -> np.ndarray:
        """``read(dataset)``, with a failed checksum or truncated chunk reported as
        :class:`~cliplens.core.io.CorruptFileError` naming the damaged file (for a gathered
        cache: the shard), and the values checked to be finite and inside the recorded bounds."""
        ds = self.array(name)
        try:
            with reading(self.path, name):
                arr = read(ds)
            return check_values(self.path, name, arr, self._bounds)
        except CorruptFileError:
            if ds.is_virtual:
                self._find_damaged_shard(name)
            raise

    def _find_damaged_shard(self, name: str) -> None:
        """Read and check ``name`` in each source file of the virtual dataset (against that
        shard's own recorded bounds); raise for the first that fails, so the error names the
        shard to delete rather than the gathered file."""
        for full, dset in self._sources(name):
            hint = rebuild_hint(full, self.path)  # the gathered file too: it maps to the shard
            with open_h5(full, hint) as h5:
                with reading(full, dset, hint):
                    arr = h5[dset][()]
                check_values(full, dset, arr, get_provenance(h5).get("bounds"), hint)

    def load(self, name: str) -> np.ndarray:
        """All rows of ``name`` in the stored dtype."""
        return self._get(name, lambda ds: ds[()])

    def read(self, name: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows ``rows`` of ``name`` (any order, duplicates allowed), stored dtype."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            # contiguous: one slice read
            return self._get(name, lambda ds: ds[int(rows[0]):int(rows[0]) + len(rows)])
        uniq, inv = np.unique(rows, return_inverse=True)  # h5py wants increasing indices
        return self._get(name, lambda ds: ds[uniq])[inv]

    def layers(self, name: str, positions: Sequence[int]) -> np.ndarray:
        """``name[:, positions]`` (axis 1, e.g. kept layers), read one position at a time."""
        return self._get(name, lambda ds: np.stack([ds[:, int(i)] for i in positions], axis=1))

    def check_index(self) -> np.ndarray:
        """The row index, verified to be ``start .. stop-1`` (IncompleteFileError if not)."""
        index = self.load("index")
        prov = self.provenance
        if "start" in prov and "stop" in prov and not np.array_equal(
                index, np.arange(prov["start"], prov["stop"])):
            raise IncompleteFileError(f"{self.path}: row index is not {prov['start']}.."
                                      f"{prov['stop']}-1; the cache is damaged, delete it and "
                                      "rerun")
        return index

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "RowCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cache_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance of a cache file without reading its arrays (no completeness check)."""
    with open_h5(path) as h5:
        return get_provenance(h5)
