"""Verified, resumable, atomic downloads; safe archive extraction; checks of manual datasets.

* :func:`download` streams a URL (standard-library ``urllib``) to ``dest.part``, resumes an
  existing ``.part`` with an HTTP ``Range`` request (and starts over when the server ignores
  it), checks the byte count and every expected digest, and only then renames the file onto
  ``dest``.  A truncated transfer is retried (resuming); a final failure or a checksum mismatch
  deletes the partial file and raises an error naming the URL and the expected and actual
  size/digest, so nothing half-done is left behind.  A ``.part`` left by a killed process is
  resumed by the next call.
* :func:`verify` checks a file already on disk; :func:`download` skips a good file.
* :func:`extract` unpacks a tar or zip into a temporary folder inside the destination, rejects
  members that would land outside it (``..``, absolute paths, escaping links, devices), and
  then renames the top-level entries into place.
* :func:`check_manual` checks the layout of a dataset the user places by hand and raises
  :class:`ManualDatasetError` with the catalog's instructions when it is incomplete.
* :func:`load_catalog` reads ``catalog.yaml`` (URLs, sizes, digests and their sources).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from importlib import resources as _resources
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

import yaml
from tqdm.auto import tqdm

from .. import __version__
from ..io import _fsync_dir, write_json_atomic

log = logging.getLogger("cliplens.download")

CHUNK = 1 << 20
USER_AGENT = f"cliplens/{__version__} (python-urllib)"
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
    return (_resources.files("cliplens.data") / "catalog.yaml").read_text()


#: environment variable naming extra catalog files (``os.pathsep``-separated) whose entries
#: add to or replace the packaged ones, e.g. to pin a locally computed checksum or a mirror
CATALOG_ENV = "CLIPLENS_CATALOG"


def load_catalog() -> dict:
    """The parsed catalog: ``{"datasets": {name: entry}}`` (a fresh copy each call).

    The packaged ``catalog.yaml``, then each file listed in ``$CLIPLENS_CATALOG``, whose
    datasets replace packaged entries of the same name.
    """
    cat = yaml.safe_load(_catalog_text())
    if not isinstance(cat, dict) or not isinstance(cat.get("datasets"), dict):
        raise ValueError("cliplens/data/catalog.yaml must have a top-level 'datasets' mapping")
    for extra in filter(None, os.environ.get(CATALOG_ENV, "").split(os.pathsep)):
        more = yaml.safe_load(Path(extra).read_text())
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
    """The catalog entry of dataset ``name``."""
    ds = load_catalog()["datasets"]
    if name not in ds:
        raise KeyError(f"dataset {name!r} is not in the catalog; known: {sorted(ds)}")
    return ds[name]


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


# ---------------------------------------------------------------------------------------------
# Download


class _Transient(DownloadError):
    """A failure worth retrying (truncation, reset, timeout, 5xx)."""


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _fetch(
    url: str,
    part: Path,
    algorithms: Iterable[str],
    size: int | None,
    timeout: float,
    chunk_size: int,
    progress: bool,
    desc: str,
) -> tuple[bool, int, dict[str, str]]:
    """One attempt: complete ``part`` from ``url``.

    Returns (resumed, bytes in part, digests of part).  Raises :class:`_Transient` for
    retryable failures (the valid prefix stays in ``part``) and :class:`DownloadError` otherwise.
    """
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > int(size):
        log.warning("%s is longer than the expected %d bytes; starting over", part, size)
        _remove(part)
        have = 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have and (size is None or have == int(size)):
            # nothing left to send: the part is already whole; the caller verifies it
            return True, have, file_digests(part, algorithms)
        if err.code == 416:
            _remove(part)
            raise _Transient(f"HTTP 416 for a resume at byte {have}; starting over") from err
        if err.code >= 500 or err.code in (408, 429):
            raise _Transient(f"HTTP {err.code} {err.reason}") from err
        raise DownloadError(f"HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _Transient(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from err

    with resp:
        clen = resp.headers.get("Content-Length")
        body = int(clen) if clen is not None and clen.isdigit() else None
        resumed = False
        total = body
        if have and resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                _remove(part)
                raise _Transient(f"bad Content-Range {resp.headers.get('Content-Range')!r} "
                                 f"for a resume at byte {have}; starting over")
            resumed = True
            total = int(m.group(3)) if m.group(3) != "*" else (
                have + body if body is not None else None)
        elif have:
            log.info("%s ignored the Range request (HTTP %d); downloading from the start",
                     url, resp.status)
            have = 0
        if size is not None and total is not None and total != int(size):
            _remove(part)
            raise ChecksumError(f"size: expected {int(size)} bytes, the server announces {total}")

        hashers = _new_hashers(algorithms)
        if resumed:  # digest the prefix already on disk, then continue the stream
            with open(part, "rb") as fh:
                while buf := fh.read(CHUNK):
                    for h in hashers.values():
                        h.update(buf)
        received = 0
        truncated = None
        with open(part, "ab" if resumed else "wb") as fh, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=desc, disable=not progress, mininterval=1.0,
        ) as bar:
            while True:
                try:
                    buf = resp.read(chunk_size)
                except (http.client.HTTPException, OSError) as err:  # reset, timeout, ...
                    truncated = f"{type(err).__name__}: {err}"
                    break
                if not buf:
                    break
                fh.write(buf)
                for h in hashers.values():
                    h.update(buf)
                received += len(buf)
                bar.update(len(buf))
            fh.flush()
            os.fsync(fh.fileno())
        nbytes = have + received if resumed else received
        if body is not None and received < body:
            raise _Transient(f"truncated: the connection closed after {nbytes} of "
                             f"{(have if resumed else 0) + body} bytes")
        if truncated:
            raise _Transient(f"truncated after {nbytes} bytes ({truncated})")
    return resumed, nbytes, {a: h.hexdigest() for a, h in hashers.items()}


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    progress: bool = True,
    *,
    mirrors: Iterable[str] = (),
    retries: int = 2,
    retry_wait: float = 2.0,
    timeout: float = 60.0,
    chunk_size: int = CHUNK,
) -> Path:
    """Fetch ``url`` to ``dest``, verified, atomically and resumably; return ``dest``.

    * A ``dest`` that already matches ``size``/``sha256``/``md5`` is kept (no network).
    * Bytes go to ``dest.part``; an existing ``.part`` is resumed with ``Range: bytes=N-``.
      A server answering 200 instead of 206 is read from the start.
    * A transfer that ends early (fewer bytes than Content-Length, reset, timeout, HTTP 5xx)
      is retried ``retries`` times per URL, resuming, after ``retry_wait * 2**k`` seconds;
      then the ``mirrors`` are tried in order.
    * The result must match ``size`` and every given digest; only then is ``.part`` fsynced
      and renamed onto ``dest``.  A mismatch deletes ``.part`` (a resumed file gets one fresh
      try first) and raises :class:`ChecksumError` naming the URL, expected and actual values.
      Every other final failure deletes ``.part`` too and raises :class:`DownloadError`.

    The SHA-256 of the download is always computed and logged, so a file without a published
    checksum can be pinned later.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    exp = _expected(sha256, md5)
    if dest.exists():
        if verify(dest, sha256, md5, size, progress=progress):
            log.info("%s already present and verified", dest)
            return dest
        log.warning("%s exists but does not match the catalog; downloading it again", dest)
        _remove(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    algorithms = ("sha256", *exp)
    failures: list[str] = []
    mismatch = False
    for u in [url, *mirrors]:
        attempt = 0
        while attempt <= retries:
            if attempt:
                time.sleep(retry_wait * 2 ** (attempt - 1))
            attempt += 1
            try:
                resumed, nbytes, digests = _fetch(u, part, algorithms, size, timeout,
                                                  chunk_size, progress, dest.name)
            except _Transient as err:
                failures.append(f"{u} (attempt {attempt}): {err}")
                log.warning("download of %s: %s", u, err)
                continue
            except ChecksumError as err:
                _remove(part)
                failures.append(f"{u}: {err}")
                mismatch = True
                break
            except DownloadError as err:
                _remove(part)
                failures.append(f"{u}: {err}")
                break
            probs = _problems(nbytes, digests, size, exp)
            if not probs:
                os.replace(part, dest)
                _fsync_dir(dest.parent)
                log.info("downloaded %s (%d bytes, sha256 %s)", dest, nbytes, digests["sha256"])
                return dest
            _remove(part)
            failures.append(f"{u}: " + "; ".join(probs) + (" (resumed download)" if resumed
                                                             else ""))
            if resumed:  # the old prefix may be what is wrong: one fresh try
                continue
            mismatch = True
            break
    _remove(part)
    detail = "\n  ".join(failures)
    cls = ChecksumError if mismatch else DownloadError
    raise cls(f"could not download {dest.name} from {url}"
              + (f" (or mirrors {list(mirrors)})" if mirrors else "")
              + f"; nothing was kept.\n  {detail}")


# ---------------------------------------------------------------------------------------------
# Extraction


def _check_member_name(name: str, archive: Path) -> PurePosixPath:
    norm = name.replace("\\", "/")
    p = PurePosixPath(norm)
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or ".." in p.parts:
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} would be written outside the extraction folder; "
            "refusing to extract this archive")
    return p


def _check_tar_member(m: tarfile.TarInfo, archive: Path) -> None:
    p = _check_member_name(m.name, archive)
    if m.isdev():
        raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device file; refusing")
    if m.issym():
        target = m.linkname.replace("\\", "/")
        joined = PurePosixPath(os.path.normpath(str(p.parent / target)))
        if target.startswith("/") or joined.parts[:1] == ("..",):
            raise UnsafeArchiveError(f"{archive}: symlink {m.name!r} -> {m.linkname!r} points "
                                     "outside the extraction folder; refusing")
    if m.islnk():
        _check_member_name(m.linkname, archive)


def extract(
    archive: str | os.PathLike, dest_dir: str | os.PathLike, progress: bool = True
) -> list[Path]:
    """Unpack a tar (any compression) or zip ``archive`` into ``dest_dir``; return its top level.

    Members are unpacked into a temporary folder inside ``dest_dir`` (same file system), then each
    top-level entry is renamed into ``dest_dir``, replacing an older entry of the same name.  A
    member with an absolute path, a ``..`` component, a link escaping the folder or a device
    raises :class:`UnsafeArchiveError` and nothing is left in ``dest_dir``.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".extract-{archive.name}-", dir=dest_dir))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                for info in infos:
                    _check_member_name(info.filename, archive)
                for info in tqdm(infos, desc=f"extract {archive.name}", unit="file",
                                 disable=not progress, mininterval=1.0):
                    zf.extract(info, tmp)
        elif tarfile.is_tarfile(archive):
            # stream mode: one sequential pass, no backward seeks in compressed data
            with tarfile.open(archive, "r|*") as tf, tqdm(
                desc=f"extract {archive.name}", unit="file", disable=not progress,
                mininterval=1.0,
            ) as bar:
                for m in tf:
                    _check_tar_member(m, archive)
                    tf.extract(m, tmp, filter="data")
                    bar.update(1)
        else:
            raise ValueError(f"{archive} is neither a tar nor a zip archive")
        tops = sorted(os.listdir(tmp))
        for name in tops:
            target = dest_dir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(tmp / name, target)
        _fsync_dir(dest_dir)
        return [dest_dir / n for n in tops]
    except tarfile.FilterError as err:
        raise UnsafeArchiveError(f"{archive}: {err}; refusing to extract this archive") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Datasets: prepare downloadable ones, check manual ones


def _layout_missing(root: Path, paths: Iterable[str]) -> list[str]:
    missing = []
    for rel in paths:
        p = root / rel.rstrip("/")
        if rel.endswith("/"):
            if not (p.is_dir() and any(p.iterdir())):
                missing.append(rel)
        elif not (p.exists() and (p.is_dir() or p.stat().st_size > 0)):
            missing.append(rel)
    return missing


def check_manual(name: str, root: str | os.PathLike) -> Path:
    """Check that manual dataset ``name`` is laid out under ``root``; return ``root``.

    Raises :class:`ManualDatasetError` listing what is missing, followed by the catalog's
    instructions (where to get the files and where to put them).
    """
    entry = dataset_entry(name)
    if not entry.get("manual"):
        raise ValueError(f"dataset {name!r} is downloaded by the workflow, not placed by hand")
    root = Path(root)
    alternatives = entry["layout"]
    missing = [_layout_missing(root, alt) for alt in alternatives]
    if any(not m for m in missing):
        return root
    lines = [f"Dataset {name!r} ({entry.get('title', name)}) is not in place under "
             f"{root.resolve()}.", "Missing: " + ", ".join(missing[0])]
    for alt, miss in zip(alternatives[1:], missing[1:]):
        lines.append(f"(or instead of that: {', '.join(alt)}; missing {', '.join(miss)})")
    lines.append("")
    lines.append(entry["instructions"].replace("{root}", str(root.resolve())).rstrip())
    raise ManualDatasetError("\n".join(lines))


def extract_file(
    file: str, downloads: str | os.PathLike, dataset_root: str | os.PathLike,
    progress: bool = True, dataset: str | None = None,
) -> list[Path]:
    """Extract downloaded catalog file ``file`` into its dataset folder (``extract_to``).

    ``dataset``, when given, must be the dataset the catalog files ``file`` under.
    """
    f = catalog_files()[file]
    if dataset is not None and f["dataset"] != dataset:
        raise ValueError(f"{file} belongs to dataset {f['dataset']!r}, not {dataset!r}")
    return extract(Path(downloads) / file, Path(dataset_root) / f.get("extract_to", "."),
                   progress=progress)


def finish_dataset(name: str, root: str | os.PathLike, progress: bool = True) -> Path:
    """Run the catalog's post-extraction steps for ``name`` and write ``root/.ready`` last.

    Steps: verify and extract each ``nested`` archive (skipped when its ``creates`` path is
    already there), remove ``cleanup`` folders, then require every ``check`` path.  The marker
    is JSON: dataset, files and their expected digests, time.
    """
    entry = dataset_entry(name)
    root = Path(root)
    for step in entry.get("nested", []):
        arch = root / step["archive"]
        creates = step.get("creates")
        if not arch.exists():
            if creates and (root / creates).exists():
                log.info("%s: %s already extracted", name, creates)
                continue
            raise DownloadError(f"{name}: expected {arch} inside the downloaded archive; "
                                "delete the dataset folder and run again")
        try:
            check_file(arch, step.get("sha256"), step.get("md5"), step.get("size"), progress)
        except ChecksumError as err:
            if step.get("strict", True):
                raise
            log.warning("%s: %s (the outer archive was verified; continuing)", name, err)
        extract(arch, root / step.get("extract_to", "."), progress=progress)
    for rel in entry.get("cleanup", []):
        shutil.rmtree(root / rel, ignore_errors=True)
    missing = [rel for rel in entry.get("check", []) if not (root / rel).exists()]
    if missing:
        raise DownloadError(f"{name}: after extraction these are missing under {root}: "
                            f"{missing}; the archives may have changed upstream")
    info = {
        "dataset": name,
        "files": {f["name"]: {k: f.get(k) for k in ("url", "size", "sha256", "md5")}
                  for f in entry.get("files", [])},
        "prepared": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cliplens": __version__,
    }
    write_json_atomic(root / READY, info)
    return root / READY


def mark_manual_ready(name: str, root: str | os.PathLike) -> Path:
    """Check manual dataset ``name`` and write ``root/.ready`` (JSON) last."""
    root = check_manual(name, root)
    write_json_atomic(root / READY, {"dataset": name, "manual": True,
                                     "checked": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return root / READY


def fetch_dataset(name: str, resources: str | os.PathLike, progress: bool = True) -> Path:
    """Download, verify, extract and finish dataset ``name`` under ``resources`` (no Snakemake).

    Files go to ``{resources}/downloads/``, the dataset to ``{resources}/datasets/{name}/``.
    Manual datasets are only checked.  Returns the dataset folder.
    """
    resources = Path(resources)
    root = resources / "datasets" / name
    if (root / READY).exists():
        return root
    entry = dataset_entry(name)
    if entry.get("manual"):
        mark_manual_ready(name, root)
        return root
    for f in entry.get("files", []):
        path = download(f["url"], resources / "downloads" / f["name"], f.get("sha256"),
                        f.get("md5"), f.get("size"), progress, mirrors=f.get("mirrors", ()))
        extract(path, root / f.get("extract_to", "."), progress=progress)
    finish_dataset(name, root, progress)
    return root


def describe_digest_sources() -> str:
    """One line per catalog file: name, digests present and where they come from (for docs)."""
    rows = []
    for name, f in catalog_files().items():
        kinds = [k for k in ("sha256", "md5") if f.get(k)] or ["none"]
        rows.append(f"{name}: {'+'.join(kinds)}; {' '.join(str(f.get('source', '')).split())}")
    return "\n".join(rows)


__all__ = [
    "READY", "CATALOG_ENV", "DownloadError", "ChecksumError", "UnsafeArchiveError", "ManualDatasetError",
    "load_catalog", "dataset_entry", "catalog_files", "file_digests", "verify", "check_file",
    "download", "extract", "check_manual", "extract_file", "finish_dataset", "mark_manual_ready",
    "fetch_dataset", "describe_digest_sources",
]
