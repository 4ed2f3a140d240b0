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


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it onto ``path``.

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
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


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
    with h5py.File(path, "r") as h5:
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
