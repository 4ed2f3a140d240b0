"""Verified, resumable, atomic downloads.

:func:`download` streams a URL (standard-library ``urllib``) to ``dest.part``, resumes an
existing ``.part`` with an HTTP ``Range`` request (and starts over when the server ignores it),
checks the byte count and every expected digest, and only then renames the file onto ``dest``.
A truncated transfer is retried (resuming); a final failure or a checksum mismatch deletes the
partial file and raises an error naming the URL and the expected and actual size/digest, so
nothing half-done is left behind.  A ``.part`` left by a killed process is resumed by the next
call; a good file already in place is not fetched again.  :func:`fetch_dataset` does a whole
dataset without Snakemake.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable

from tqdm.auto import tqdm

from ... import __version__
from ..io import _fsync_dir
from .archives import EXTRACTED, extract_verified, finish_dataset, mark_manual_ready
from .catalog import (CHUNK, READY, ChecksumError, DownloadError, _expected, _new_hashers,
                      _problems, dataset_entry, file_digests, log, verify)

USER_AGENT = f"cliplens/{__version__} (python-urllib)"

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
        extract_verified(f["name"], path.parent, root, root / EXTRACTED / f["name"], progress)
    finish_dataset(name, root, progress)
    return root


