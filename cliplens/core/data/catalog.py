"""The dataset catalog (``catalog.yaml``: where each file comes from, its size and digests, and
how a dataset is laid out) and file digests.

* :func:`load_catalog` reads ``catalog.yaml`` (URLs, sizes, digests and their sources), plus
  the files named by ``$CLIPLENS_CATALOG``.
* :func:`verify` / :func:`check_file` check a file on disk against its size and every expected
  digest.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import os
import re
from importlib import resources as _resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from tqdm.auto import tqdm

log = logging.getLogger("cliplens.download")

CHUNK = 1 << 20
#: name of the marker written last into a prepared dataset folder
READY = ".ready"


class DownloadError(RuntimeError):
    """A file could not be fetched (network, HTTP status, truncation)."""


class ChecksumError(DownloadError):
    """A file's size or digest differs from the catalog's."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder."""


class ManualDatasetError(FileNotFoundError):
    """A manually placed dataset is missing or incomplete; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# Catalog


@functools.lru_cache(maxsize=None)
def _catalog_text() -> str:
    return (_resources.files("cliplens.core.data") / "catalog.yaml").read_text()


#: environment variable naming extra catalog files (``os.pathsep``-separated) whose entries
#: add to or replace the packaged ones, e.g. to pin a locally computed checksum or a mirror
CATALOG_ENV = "CLIPLENS_CATALOG"


def load_catalog() -> dict:
    """The parsed catalog: ``{"datasets": {name: entry}}`` (a fresh copy each call).

    The packaged ``catalog.yaml``, then each file listed in ``$CLIPLENS_CATALOG``, whose
    datasets replace packaged entries of the same name.  Parsed once per process for each set
    of files (and their modification times): planning a workflow asks for it per job.
    """
    return copy.deepcopy(_catalog())


def _catalog() -> dict:
    """The parsed catalog, shared: read it, never change it."""
    extras = tuple(filter(None, os.environ.get(CATALOG_ENV, "").split(os.pathsep)))
    return _parsed_catalog(_catalog_text(), tuple(
        (p, Path(p).stat().st_mtime_ns if Path(p).exists() else None) for p in extras))


@functools.lru_cache(maxsize=8)
def _parsed_catalog(text: str, extras: tuple) -> dict:
    load = functools.partial(yaml.load, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    cat = load(text)
    if not isinstance(cat, dict) or not isinstance(cat.get("datasets"), dict):
        raise ValueError("cliplens/core/data/catalog.yaml must have a top-level 'datasets' mapping")
    for extra, _ in extras:
        more = load(Path(extra).read_text())
        if not isinstance(more, dict) or not isinstance(more.get("datasets"), dict):
            raise ValueError(f"{extra} (from ${CATALOG_ENV}) needs a top-level 'datasets' mapping")
        cat["datasets"].update(more["datasets"])
    for name, entry in cat["datasets"].items():
        for item in [*entry.get("files", []), *entry.get("nested", [])]:
            for algo, n in (("sha256", 64), ("md5", 32)):
                val = item.get(algo)
                if val is not None and not (isinstance(val, str)
                                            and re.fullmatch(f"[0-9a-fA-F]{{{n}}}", val)):
                    raise ValueError(f"catalog: {name}: {algo} of "
                                     f"{item.get('name', item.get('archive'))} must be "
                                     f"{n} hex digits as a string (quote it), got {val!r}")
    return cat


def dataset_entry(name: str) -> dict:
    """The catalog entry of dataset ``name`` (a copy)."""
    ds = _catalog()["datasets"]
    if name not in ds:
        raise KeyError(f"dataset {name!r} is not in the catalog; known: {sorted(ds)}")
    return copy.deepcopy(ds[name])


def catalog_files() -> dict[str, dict]:
    """Every downloadable file by name, each entry with its ``dataset`` added.

    File names are unique across the catalog (they are the names under ``downloads/``).
    """
    out: dict[str, dict] = {}
    for ds_name, entry in load_catalog()["datasets"].items():
        for f in entry.get("files", []):
            if f["name"] in out:
                raise ValueError(f"catalog: file name {f['name']!r} used twice "
                                 f"({out[f['name']]['dataset']} and {ds_name})")
            out[f["name"]] = {**f, "dataset": ds_name}
    return out


# ---------------------------------------------------------------------------------------------
# Digests


def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
    exp = {}
    if sha256:
        exp["sha256"] = sha256.lower()
    if md5:
        exp["md5"] = md5.lower()
    return exp


def _new_hashers(algorithms: Iterable[str]) -> dict[str, Any]:
    return {a: hashlib.new(a) for a in dict.fromkeys(algorithms)}


def file_digests(
    path: str | os.PathLike, algorithms: Iterable[str] = ("sha256",), progress: bool = False
) -> dict[str, str]:
    """Hex digests of ``path`` for each of ``algorithms`` (one read of the file)."""
    path = Path(path)
    hashers = _new_hashers(algorithms)
    with open(path, "rb") as fh, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                      unit_divisor=1024, desc=f"hash {path.name}",
                                      disable=not progress, mininterval=1.0) as bar:
        while buf := fh.read(CHUNK):
            for h in hashers.values():
                h.update(buf)
            bar.update(len(buf))
    return {a: h.hexdigest() for a, h in hashers.items()}


def _problems(
    nbytes: int, digests: Mapping[str, str], size: int | None, expected: Mapping[str, str]
) -> list[str]:
    out = []
    if size is not None and nbytes != int(size):
        out.append(f"size: expected {int(size)} bytes, got {nbytes}")
    for algo, want in expected.items():
        got = digests.get(algo)
        if got is not None and got != want:
            out.append(f"{algo}: expected {want}, got {got}")
    return out


def verify(
    path: str | os.PathLike,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    progress: bool = False,
) -> bool:
    """True when ``path`` exists and matches every given size and digest.

    With no size and no digest, only existence is checked.
    """
    path = Path(path)
    if not path.is_file():
        return False
    nbytes = path.stat().st_size
    if size is not None and nbytes != int(size):
        return False
    exp = _expected(sha256, md5)
    if not exp:
        return True
    return not _problems(nbytes, file_digests(path, exp, progress), size, exp)


def check_file(
    path: str | os.PathLike,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    progress: bool = False,
) -> dict[str, str]:
    """Like :func:`verify`, but raise :class:`ChecksumError` naming every mismatch.

    Returns the digests computed (sha256 always, md5 when expected).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    exp = _expected(sha256, md5)
    digests = file_digests(path, ("sha256", *exp), progress)
    probs = _problems(path.stat().st_size, digests, size, exp)
    if probs:
        raise ChecksumError(f"{path} does not match the catalog: " + "; ".join(probs))
    return digests


def describe_digest_sources() -> str:
    """One line per catalog file: name, digests present and where they come from (for docs)."""
    rows = []
    for name, f in catalog_files().items():
        kinds = [k for k in ("sha256", "md5") if f.get(k)] or ["none"]
        rows.append(f"{name}: {'+'.join(kinds)}; {' '.join(str(f.get('source', '')).split())}")
    return "\n".join(rows)

