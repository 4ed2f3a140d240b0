"""Safe archive extraction and the folders of prepared and manual datasets.

* :func:`extract` unpacks a tar or zip into a temporary folder inside the destination, rejects
  members that would land outside it (``..``, absolute paths, escaping links, devices), and
  then renames the top-level entries into place.
* :func:`extract_verified` checks a downloaded archive against the catalog first, as a fresh
  download is checked: an archive copied into ``downloads/`` by hand (how offline clusters get
  data) that does not match is moved aside, never extracted, never deleted.
* :func:`finish_dataset` runs the catalog's post-extraction steps and writes ``.ready`` last,
  recording the digests actually seen.
* :func:`check_manual` checks the layout of a dataset the user places by hand and raises
  :class:`ManualDatasetError` with the catalog's instructions when it is incomplete.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterable

from tqdm.auto import tqdm

from ... import __version__
from ..io import _fsync_dir, write_json_atomic
from .catalog import (READY, ChecksumError, DownloadError, ManualDatasetError,
                      UnsafeArchiveError, _expected, _problems, catalog_files, check_file,
                      dataset_entry, file_digests, log)

#: suffix of an archive set aside because it does not match the catalog
MISMATCH = ".mismatch"
#: folder (inside a dataset folder) of the per-archive extraction markers
EXTRACTED = ".extracted"

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


def verify_archive(file: str, downloads: str | os.PathLike, progress: bool = True
                   ) -> dict[str, object]:
    """Check ``{downloads}/{file}`` against the catalog's size and digests, as a fresh
    download is checked; return what was seen: ``{"size", "sha256"[, "md5"]}``.

    A mismatch moves the file aside to ``{file}.mismatch`` (it may be a copy the user made by
    hand: it is kept, not deleted) and raises :class:`ChecksumError` naming the expected and the
    actual size/digests and where the file went.  The next run downloads the file again, or
    uses a correct copy put in its place.
    """
    f = catalog_files()[file]
    path = Path(downloads) / file
    exp = _expected(f.get("sha256"), f.get("md5"))
    nbytes = path.stat().st_size
    digests = file_digests(path, ("sha256", *exp), progress)
    probs = _problems(nbytes, digests, f.get("size"), exp)
    if probs:
        aside = path.with_name(path.name + MISMATCH)
        os.replace(path, aside)
        raise ChecksumError(
            f"{path} does not match the catalog, so it was not extracted: "
            + "; ".join(probs) + f".\n  It was moved aside to {aside} (kept, not deleted). "
            "Rerun to download it again, or put the right file at " + str(path)
            + " (catalog: cliplens/core/data/catalog.yaml)")
    return {"size": nbytes, **digests}


def extract_verified(
    file: str, downloads: str | os.PathLike, dataset_root: str | os.PathLike,
    marker: str | os.PathLike | None = None, progress: bool = True,
    dataset: str | None = None,
) -> dict[str, object]:
    """Verify downloaded catalog file ``file`` (:func:`verify_archive`), extract it into its
    dataset folder (``extract_to``) and write ``marker`` last (JSON: dataset, file, top-level
    entries, the size and digests seen); return the marker's content.  ``dataset``, when given,
    must be the dataset the catalog files ``file`` under."""
    f = catalog_files()[file]
    if dataset is not None and f["dataset"] != dataset:
        raise ValueError(f"{file} belongs to dataset {f['dataset']!r}, not {dataset!r}")
    seen = verify_archive(file, downloads, progress)
    tops = extract(Path(downloads) / file, Path(dataset_root) / f.get("extract_to", "."),
                   progress=progress)
    info = {"dataset": f["dataset"], "file": file, "entries": [t.name for t in tops],
            "seen": seen}
    if marker is not None:
        write_json_atomic(marker, info)
    return info


def finish_dataset(name: str, root: str | os.PathLike, progress: bool = True) -> Path:
    """Run the catalog's post-extraction steps for ``name`` and write ``root/.ready`` last.

    Steps: verify and extract each ``nested`` archive (skipped when its ``creates`` path is
    already there), remove ``cleanup`` folders, then require every ``check`` path.  The marker
    is JSON: dataset, per file its URL, the catalog's expected size/digests and the size and
    digests seen when it was verified before extraction (from ``.extracted/{file}``), time.
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
        "files": {f["name"]: {"url": f.get("url"),
                              "expected": {k: f.get(k) for k in ("size", "sha256", "md5")},
                              "seen": _seen(root, f["name"])}
                  for f in entry.get("files", [])},
        "prepared": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cliplens": __version__,
    }
    write_json_atomic(root / READY, info)
    return root / READY


def _seen(root: Path, file: str) -> dict | None:
    """What :func:`extract_verified` recorded for ``file`` (None: no marker)."""
    import json

    marker = root / EXTRACTED / file
    if not marker.is_file():
        return None
    return json.loads(marker.read_text()).get("seen")


def mark_manual_ready(name: str, root: str | os.PathLike) -> Path:
    """Check manual dataset ``name`` and write ``root/.ready`` (JSON) last."""
    root = check_manual(name, root)
    write_json_atomic(root / READY, {"dataset": name, "manual": True,
                                     "checked": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return root / READY


