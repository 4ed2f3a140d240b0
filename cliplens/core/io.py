"""Atomic file writes and HDF5 provenance.

Every output of cliplens is written to a temporary name in the destination directory, flushed,
fsynced and renamed into place, so a killed job never leaves a half-written file that looks done.
HDF5 files carry *provenance* attributes (model spec, dataset, preprocessing, library versions,
row count, ...) and readers refuse a file whose provenance does not match what they asked for.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import h5py
import numpy as np

#: attribute set last on a complete HDF5 file; a file without it is incomplete.
COMPLETE_ATTR = "cliplens_complete"
PROVENANCE_ATTR = "cliplens_provenance"


class ProvenanceError(ValueError):
    """An HDF5 cache was built for something other than what the reader asked for."""


class IncompleteFileError(ValueError):
    """An HDF5 file lacks the completion mark: a job died while writing it."""


class CorruptFileError(ValueError):
    """A file's bytes are not what was written: a checksum fails, the file is truncated, or its
    values break what the writer recorded (non-finite, outside the recorded bounds)."""


def rebuild_hint(path: str | os.PathLike, *also: str | os.PathLike) -> str:
    """How a user rebuilds a workflow output: delete it (and ``also``: e.g. the gathered cache
    that maps rows to a damaged shard, which Snakemake would otherwise take as up to date) and
    rerun the same command; Snakemake rebuilds what is missing and, its inputs being newer,
    whatever was made from it."""
    paths = " ".join(shlex.quote(str(p)) for p in (path, *also))
    return f"delete it and rerun your snakemake command to rebuild it: rm -r {paths}"


def corrupt(path: str | os.PathLike, what: str, hint: str | None = None) -> CorruptFileError:
    """A :class:`CorruptFileError` naming ``path``, ``what`` is wrong and the way out."""
    return CorruptFileError(f"{path} is damaged: {what}.\n  Nothing was used from it; "
                            f"{hint or rebuild_hint(path)}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask_mode(directory: bool = False) -> int:
    """The mode a new file (0o666) or directory (0o777) gets under the process umask: what
    ``open`` and ``mkdir`` give, and what ``tempfile``'s private 0600 / 0700 must be set back to,
    so that a group can read the results on a shared cluster (umask 022: 0644, 0755)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def private_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """``tempfile.mkdtemp`` in ``parent``, then given the umask's directory mode (it is renamed
    into place as an output)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    os.chmod(tmp, umask_mode(directory=True))
    return tmp


def apply_umask_modes(root: str | os.PathLike) -> None:
    """Give ``root`` and everything below it the umask's modes (:func:`umask_mode`): for a
    folder written by a library that creates private files (transformers' ``save_pretrained``
    writes its safetensors 0600) before it is renamed into place as an output."""
    root = Path(root)
    file_mode, dir_mode = umask_mode(), umask_mode(directory=True)
    os.chmod(root, dir_mode if root.is_dir() else file_mode)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), dir_mode)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), file_mode)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it, give it the umask's file mode
    and rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.  The temporary
    name keeps the destination's suffix (``.h5``, ``.csv``, ...) so libraries that dispatch on the
    suffix behave the same.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp_path, umask_mode())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (benchmarks/README.md gives its speed)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_table(path: str | os.PathLike, table, float_format: str | None = None) -> None:
    """Write a pandas DataFrame ``table`` as CSV (no index) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format=float_format)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any], compressed: bool = False) -> None:
    """Write ``arrays`` (name -> array) as an ``.npz`` to ``path`` atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compressed else np.savez)(fh, **arrays)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour shapes a cache's numbers."""
    import importlib.metadata as md

    out = {}
    for name in ("torch", "open_clip_torch", "transformers", "numpy", "h5py"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------------------------------------
# HDF5: checksummed datasets, guarded reads

#: ``create_dataset`` keywords adding HDF5's Fletcher-32 filter: a 32-bit checksum per chunk,
#: stored with the chunk and verified by HDF5 whenever the chunk is read, so a flipped byte
#: fails the read instead of returning a wrong number.
CHECKSUM = {"fletcher32": True}


def create_checked(h5: h5py.Group, name: str, data=None, *, shape=None, dtype=None,
                   chunks=None, **kw) -> h5py.Dataset:
    """``h5.create_dataset`` with the Fletcher-32 checksum filter (:data:`CHECKSUM`).

    The filter needs chunked storage: ``chunks`` as given, else h5py's guess.  An empty dataset
    (some dimension 0) holds no chunk to check and is stored contiguous.  Text must be
    fixed-length bytes (:func:`text_array`): a variable-length string's bytes live in a heap
    outside the chunks, where no checksum covers them.
    """
    if data is not None:
        data = np.asarray(data)
        shape = data.shape if shape is None else shape
    if shape is not None and 0 in tuple(shape):
        return h5.create_dataset(name, shape=shape, dtype=dtype if data is None else data.dtype,
                                 **{k: v for k, v in kw.items() if k == "fillvalue"})
    return h5.create_dataset(name, data=data, shape=shape, dtype=dtype, chunks=chunks or True,
                             **CHECKSUM, **kw)


def text_array(strings) -> np.ndarray:
    """Strings as a fixed-length UTF-8 byte array ``S{L}`` (L = longest encoding, at least 1),
    which HDF5 stores inside checksummed chunks; :func:`read_text` turns it back."""
    encoded = [s.encode("utf-8") for s in strings]
    return np.array(encoded, dtype=f"S{max([1, *map(len, encoded)])}")


def read_text(values) -> list[str]:
    """Decode what :func:`text_array` stored (or a variable-length string array)."""
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def open_h5(path: str | os.PathLike, hint: str | None = None) -> h5py.File:
    """``h5py.File(path, "r")``; a file HDF5 cannot open (truncated, overwritten, not HDF5)
    raises :class:`CorruptFileError` naming it (a missing file: FileNotFoundError)."""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as err:
        raise corrupt(path, f"HDF5 cannot open it ({err})", hint) from err


@contextlib.contextmanager
def reading(path: str | os.PathLike, name: str, hint: str | None = None) -> Iterator[None]:
    """Turn an HDF5 read error inside the block (a failed checksum, a truncated chunk) into a
    :class:`CorruptFileError` naming ``path`` and dataset ``name``."""
    try:
        yield
    except OSError as err:
        raise corrupt(path, f"reading /{name} failed ({err}): a checksum or the file's "
                            "structure does not hold", hint) from err


def value_bounds(arrays: Mapping[str, np.ndarray], into: dict | None = None) -> dict:
    """``{name: [min, max]}`` of the float arrays of ``arrays``, merged into ``into`` (running
    bounds over batches).  Raises ValueError for a non-finite value: a cache never stores one."""
    out = {} if into is None else into
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
            continue
        lo, hi = float(np.min(arr)), float(np.max(arr))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            bad = int(np.sum(~np.isfinite(arr)))
            raise ValueError(f"{name}: {bad} non-finite values computed (NaN or beyond "
                             f"{arr.dtype}'s range); for float16 overflow use dtype float32")
        old = out.get(name)
        out[name] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]
    return out


def check_values(path: str | os.PathLike, name: str, arr: np.ndarray,
                 bounds: Mapping[str, Any] | None, hint: str | None = None) -> np.ndarray:
    """Return ``arr`` (rows of float array ``name`` read from ``path``) after checking it is
    finite and inside ``bounds[name]`` = [min, max] recorded when the file was written;
    :class:`CorruptFileError` otherwise."""
    if not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
        return arr
    finite = np.isfinite(arr)
    if not finite.all():
        raise corrupt(path, f"/{name} holds {int((~finite).sum())} NaN or infinite values, "
                            "which its writer never stores", hint)
    if bounds and name in bounds:
        lo, hi = bounds[name]
        amin, amax = float(arr.min()), float(arr.max())
        if amin < lo or amax > hi:
            raise corrupt(path, f"/{name} holds values in [{amin:.4g}, {amax:.4g}], outside the "
                                f"[{lo:.4g}, {hi:.4g}] recorded when it was written", hint)
    return arr


def set_provenance(h5: h5py.File | h5py.Group, provenance: Mapping[str, Any]) -> None:
    """Store ``provenance`` (a JSON-serialisable mapping) as an attribute of ``h5``."""
    h5.attrs[PROVENANCE_ATTR] = json.dumps(dict(provenance), sort_keys=True, default=_json_default)


def get_provenance(h5: h5py.File | h5py.Group) -> dict[str, Any]:
    """Return the provenance mapping stored on ``h5`` (empty if none)."""
    raw = h5.attrs.get(PROVENANCE_ATTR)
    if raw is None:
        return {}
    if isinstance(raw, bytes):
        raw = raw.decode()
    return json.loads(raw)


def mark_complete(h5: h5py.File) -> None:
    """Mark an HDF5 file complete; call last, just before closing."""
    h5.attrs[COMPLETE_ATTR] = True


def check_provenance(
    path: str | os.PathLike, expected: Mapping[str, Any], *, require_complete: bool = True
) -> dict[str, Any]:
    """Open ``path`` and verify its provenance against ``expected``.

    Every key of ``expected`` must be present with an equal value (after a JSON round trip, so
    tuples and lists compare equal).  Raises :class:`IncompleteFileError` for a file without the
    completion mark and :class:`ProvenanceError` naming each mismatching key otherwise.
    Returns the stored provenance.
    """
    path = Path(path)
    with open_h5(path) as h5:
        if require_complete and not bool(h5.attrs.get(COMPLETE_ATTR, False)):
            raise IncompleteFileError(
                f"{path} is incomplete (no '{COMPLETE_ATTR}' mark): a job died while writing it; "
                "delete it and rerun"
            )
        stored = get_provenance(h5)
    want = json.loads(json.dumps(dict(expected), default=_json_default))
    bad = [
        f"{k}: cache has {stored.get(k, '<missing>')!r}, expected {v!r}"
        for k, v in want.items()
        if stored.get(k, "<missing>") != v
    ]
    if bad:
        raise ProvenanceError(
            f"{path} was built for something else; refusing it.\n  " + "\n  ".join(bad)
        )
    return stored
