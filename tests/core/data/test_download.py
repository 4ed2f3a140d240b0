"""Downloads against a loopback HTTP server: verification, truncation, resume, atomicity, safe
extraction.  No internet: every URL is http://127.0.0.1:<port>/..."""

import hashlib
import io
import os
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cliplens.core.data import archives
from cliplens.core.data import catalog as cat
from cliplens.core.data import download as dl
from cliplens.core.data.archives import extract
from cliplens.core.data.catalog import (
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    verify,
)
from cliplens.core.data.download import download

FAST = dict(progress=False, retries=2, retry_wait=0.0, timeout=5.0, chunk_size=4096)


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files[path] = (bytes, mode)``; mode: ok | truncate | norange.

    HTTP/1.0, so the connection closes after each response; every request's path and Range
    header is appended to ``server.requests``.
    """

    def do_GET(self):  # noqa: N802 - http.server API
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        if self.path not in srv.files:
            self.send_error(404)
            return
        data, mode = srv.files[self.path]
        start = 0
        if rng and mode != "norange":
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncate":  # promise everything, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.requests = {}, []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    srv.url = lambda path: f"http://127.0.0.1:{srv.server_address[1]}{path}"
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


MEMBERS = {"pkg/a.txt": b"hello\n", "pkg/sub/b.bin": os.urandom(50_000), "top.txt": b"x"}


def _sha(b):
    return hashlib.sha256(b).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_good_download_verifies_and_extracts(server, tmp_path, kind):
    data = _tar_gz(MEMBERS) if kind == "tar.gz" else _zip(MEMBERS)
    server.files["/a"] = (data, "ok")
    dest = tmp_path / "dl" / f"archive.{kind}"
    out = download(server.url("/a"), dest, sha256=_sha(data),
                   md5=hashlib.md5(data).hexdigest(), size=len(data), **FAST)
    assert out == dest and dest.read_bytes() == data
    assert _leftovers(dest.parent) == [dest.name]  # no .part
    assert verify(dest, sha256=_sha(data), size=len(data))
    assert not verify(dest, sha256="0" * 64)
    # a good file is not fetched again
    n = len(server.requests)
    download(server.url("/a"), dest, sha256=_sha(data), size=len(data), **FAST)
    assert len(server.requests) == n

    target = tmp_path / "ds"
    (target / "pkg").mkdir(parents=True)
    (target / "pkg" / "stale.txt").write_text("old")  # replaced, not merged
    tops = extract(dest, target, progress=False)
    assert sorted(p.name for p in tops) == ["pkg", "top.txt"]
    for name, content in MEMBERS.items():
        assert (target / name).read_bytes() == content
    assert not (target / "pkg" / "stale.txt").exists()
    assert _leftovers(target) == ["pkg", "top.txt"]  # no temporary folder left


def test_truncated_response_fails_clearly_and_leaves_nothing(server, tmp_path):
    data = os.urandom(100_000)
    server.files["/t"] = (data, "truncate")
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError) as err:
        download(server.url("/t"), dest, sha256=_sha(data), size=len(data), **FAST)
    msg = str(err.value)
    assert "truncated" in msg and server.url("/t") in msg and "50000 of 100000" in msg
    assert not isinstance(err.value, ChecksumError)
    assert _leftovers(tmp_path) == []
    # bounded: one request per attempt (1 + retries); attempts after the first ask to resume
    assert len(server.requests) == 3
    assert server.requests[1][1] == "bytes=50000-"


def test_truncation_is_caught_without_a_known_checksum(server, tmp_path):
    data = os.urandom(20_000)
    server.files["/t"] = (data, "truncate")
    with pytest.raises(DownloadError, match="truncated"):
        download(server.url("/t"), tmp_path / "f.bin", **dict(FAST, retries=0))
    assert _leftovers(tmp_path) == []


def test_wrong_checksum_names_both_digests_and_leaves_nothing(server, tmp_path):
    data = os.urandom(30_000)
    server.files["/c"] = (data, "ok")
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        download(server.url("/c"), tmp_path / "f.bin", sha256=wrong, **FAST)
    msg = str(err.value)
    assert server.url("/c") in msg and wrong in msg and _sha(data) in msg
    assert _leftovers(tmp_path) == []
    assert len(server.requests) == 1  # a fresh full download with a bad digest is not retried

    with pytest.raises(ChecksumError, match=r"md5: expected f+, got " + hashlib.md5(data).hexdigest()):
        download(server.url("/c"), tmp_path / "g.bin", md5="f" * 32, **FAST)
    assert _leftovers(tmp_path) == []


def test_size_announced_by_server_is_checked_before_downloading(server, tmp_path):
    data = os.urandom(10_000)
    server.files["/s"] = (data, "ok")
    with pytest.raises(ChecksumError, match=r"size: expected 10001 bytes, the server announces 10000"):
        download(server.url("/s"), tmp_path / "f.bin", size=len(data) + 1, **FAST)
    assert _leftovers(tmp_path) == []


def test_resume_completes_a_partial_file_with_a_range_request(server, tmp_path):
    data = os.urandom(80_000)
    server.files["/r"] = (data, "ok")
    dest = tmp_path / "f.bin"
    Path(str(dest) + ".part").write_bytes(data[:30_000])  # left by a killed job
    download(server.url("/r"), dest, sha256=_sha(data), size=len(data), **FAST)
    assert server.requests == [("/r", "bytes=30000-")]
    assert dest.read_bytes() == data and _leftovers(tmp_path) == ["f.bin"]


def test_server_ignoring_range_still_gives_the_right_file(server, tmp_path):
    data = os.urandom(60_000)
    server.files["/n"] = (data, "norange")
    dest = tmp_path / "f.bin"
    Path(str(dest) + ".part").write_bytes(b"\xff" * 25_000)  # not even a valid prefix
    download(server.url("/n"), dest, sha256=_sha(data), size=len(data), **FAST)
    assert server.requests == [("/n", "bytes=25000-")]  # asked to resume, got a 200
    assert dest.read_bytes() == data and _leftovers(tmp_path) == ["f.bin"]


def test_corrupt_partial_file_is_discarded_and_fetched_fresh(server, tmp_path):
    data = os.urandom(40_000)
    server.files["/p"] = (data, "ok")
    dest = tmp_path / "f.bin"
    Path(str(dest) + ".part").write_bytes(b"\x00" * 10_000)  # wrong bytes, right length
    download(server.url("/p"), dest, sha256=_sha(data), **FAST)
    assert server.requests == [("/p", "bytes=10000-"), ("/p", None)]
    assert dest.read_bytes() == data


def test_complete_partial_file_answered_416_is_verified(server, tmp_path):
    data = os.urandom(5_000)
    server.files["/w"] = (data, "ok")
    dest = tmp_path / "f.bin"
    Path(str(dest) + ".part").write_bytes(data)
    download(server.url("/w"), dest, sha256=_sha(data), size=len(data), **FAST)
    assert dest.read_bytes() == data and _leftovers(tmp_path) == ["f.bin"]


def test_http_error_then_mirror(server, tmp_path):
    data = os.urandom(3_000)
    server.files["/mirror"] = (data, "ok")
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(server.url("/missing"), dest, sha256=_sha(data), **FAST)
    assert _leftovers(tmp_path) == [] and len(server.requests) == 1  # 404 is not retried
    download(server.url("/missing"), dest, sha256=_sha(data),
             mirrors=[server.url("/mirror")], **FAST)
    assert dest.read_bytes() == data


def _evil_tar(tmp_path: Path, name: str, link: str | None = None) -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tf:
        good = tarfile.TarInfo("ok/file.txt")
        good.size = 2
        tf.addfile(good, io.BytesIO(b"ok"))
        info = tarfile.TarInfo(name)
        if link is None:
            info.size = 4
            tf.addfile(info, io.BytesIO(b"evil"))
        else:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tf.addfile(info)
    return path


@pytest.mark.parametrize("name, link", [
    ("../escaped.txt", None),
    ("ok/../../escaped.txt", None),
    ("/tmp/absolute-escaped.txt", None),
    ("ok/link", "../../escaped.txt"),
    ("ok/abslink", "/etc/passwd"),
])
def test_tar_path_traversal_is_rejected(tmp_path, name, link):
    arch = _evil_tar(tmp_path, name, link)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="refus"):
        extract(arch, dest, progress=False)
    assert _leftovers(dest) == []  # not even the good member
    assert not (tmp_path / "escaped.txt").exists()


def test_zip_path_traversal_is_rejected(tmp_path):
    arch = tmp_path / "evil.zip"
    arch.write_bytes(_zip({"ok.txt": b"ok", "../escaped.txt": b"evil"}))
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=r"\.\./escaped\.txt"):
        extract(arch, dest, progress=False)
    assert _leftovers(dest) == [] and not (tmp_path / "escaped.txt").exists()


def test_fetch_dataset_end_to_end_with_nested_archive(server, tmp_path, monkeypatch):
    """A catalog entry (files, nested archive, cleanup, check) fetched through the loopback."""
    inner = _tar_gz({"images/cat/1.txt": b"meow"})
    outer = _zip({"bundle/inner.tar.gz": inner, "bundle/README": b"r"})
    server.files["/outer.zip"] = (outer, "ok")
    catalog = f"""
datasets:
  fake:
    files:
      - name: fake-outer.zip
        url: {server.url('/outer.zip')}
        size: {len(outer)}
        sha256: {_sha(outer)}
        source: computed by this test
        extract_to: _raw
    nested:
      - archive: _raw/bundle/inner.tar.gz
        sha256: {_sha(inner)}
        extract_to: data
        creates: data/images
    cleanup: [_raw]
    check: [data/images/cat/1.txt]
"""
    monkeypatch.setattr(cat, "_catalog_text", lambda: catalog)
    root = dl.fetch_dataset("fake", tmp_path / "res", progress=False)
    assert (root / "data/images/cat/1.txt").read_bytes() == b"meow"
    assert not (root / "_raw").exists()
    ready = (root / ".ready").read_text()
    assert _sha(outer) in ready
    assert (tmp_path / "res/downloads/fake-outer.zip").read_bytes() == outer
    # the prepared dataset is not fetched again
    n = len(server.requests)
    dl.fetch_dataset("fake", tmp_path / "res", progress=False)
    assert len(server.requests) == n


def test_strict_nested_checksum_stops_preparation(tmp_path, monkeypatch):
    inner = _tar_gz({"x.txt": b"x"})
    root = tmp_path / "ds"
    (root / "_raw").mkdir(parents=True)
    (root / "_raw/inner.tar.gz").write_bytes(inner)
    catalog = f"""
datasets:
  fake:
    files: []
    nested:
      - archive: _raw/inner.tar.gz
        sha256: "{"1" * 64}"
        extract_to: data
    check: [data/x.txt]
"""
    monkeypatch.setattr(cat, "_catalog_text", lambda: catalog)
    with pytest.raises(ChecksumError, match="sha256: expected 1+, got " + _sha(inner)):
        archives.finish_dataset("fake", root, progress=False)
    assert not (root / ".ready").exists() and not (root / "data").exists()


def _data_workflow(tmp_path):
    """A Snakefile of the shared rules and rules/data.smk in ``tmp_path``, reading the extra
    catalog ``tmp_path/extra.yaml``: (resources folder, results folder, smk(*targets))."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[3]
    (tmp_path / "Snakefile").write_text(f"""
from cliplens.core.settings import load_settings
configfile: "{repo}/config.yaml"
S = load_settings(config)
include: "{repo}/rules/common.smk"
include: "{repo}/rules/data.smk"
""")
    res, out = tmp_path / "res", tmp_path / "out"
    env = dict(os.environ, CLIPLENS_CATALOG=str(tmp_path / "extra.yaml"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))

    def smk(*targets):
        return subprocess.run(
            [sys.executable, "-m", "snakemake", "--cores", "1", "--keep-going", "--config",
             f"results={out}", f"resources={res}", "--", *map(str, targets)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return res, out, smk


def test_snakemake_rules_download_extract_and_check(server, tmp_path):
    """rules/data.smk end to end on a catalog served from the loopback: download, extract,
    nested step, .ready; a manual dataset fails with its instructions; a rerun does nothing."""
    inner = _tar_gz({"cat/1.txt": b"meow"})
    outer = _zip({"bundle/inner.tar.gz": inner})
    other = _tar_gz({"labels/all.txt": b"cat\n"})
    server.files["/outer.zip"] = (outer, "ok")
    server.files["/other.tar.gz"] = (other, "norange")
    (tmp_path / "extra.yaml").write_text(f"""
datasets:
  fake:
    files:
      - {{name: fake-outer.zip, url: "{server.url('/outer.zip')}", size: {len(outer)},
          sha256: "{_sha(outer)}", source: test, extract_to: _raw}}
      - {{name: fake-other.tar.gz, url: "{server.url('/other.tar.gz')}",
          md5: "{hashlib.md5(other).hexdigest()}", source: test, extract_to: .,
          checksum_note: the test serves it}}
    nested:
      - {{archive: _raw/bundle/inner.tar.gz, sha256: "{_sha(inner)}", extract_to: images,
          creates: images/cat}}
    cleanup: [_raw]
    check: [images/cat/1.txt, labels/all.txt]
  fakemanual:
    manual: true
    layout: [[thing.bin]]
    instructions: "Put thing.bin into {{root}}/ by hand."
""")
    res, out, smk = _data_workflow(tmp_path)

    ready, manual = res / "datasets/fake/.ready", res / "datasets/fakemanual/.ready"
    run = smk(ready, manual)
    assert run.returncode != 0  # the manual dataset is missing ...
    assert "Put thing.bin into" in run.stderr and "Missing: thing.bin" in run.stderr
    assert (res / "datasets/fake/images/cat/1.txt").read_bytes() == b"meow"  # ... the rest ran
    assert (res / "datasets/fake/labels/all.txt").read_bytes() == b"cat\n"
    assert not (res / "datasets/fake/_raw").exists() and ready.exists() and not manual.exists()
    assert (out / "logs/download_file/fake-outer.zip.log").exists()

    (res / "datasets/fakemanual").mkdir(parents=True, exist_ok=True)
    (res / "datasets/fakemanual/thing.bin").write_bytes(b"1")
    run = smk(ready, manual)
    assert run.returncode == 0, run.stderr[-3000:]
    assert manual.exists() and "rule download_file" not in run.stderr  # nothing fetched twice


def test_an_archive_placed_by_hand_is_verified_before_extraction(server, tmp_path):
    """How offline clusters get data: the archive is copied into downloads/ by hand.  A wrong
    copy is moved aside (kept) with both digests named and nothing extracted; the rule then
    downloads it again; a right copy is extracted and .ready records the digest seen."""
    good = _tar_gz({"labels/all.txt": b"cat\n"})
    bad = _tar_gz({"labels/all.txt": b"dog\n"})
    server.files["/good.tar.gz"] = (good, "ok")
    (tmp_path / "extra.yaml").write_text(f"""
datasets:
  fake:
    files:
      - {{name: fake.tar.gz, url: "{server.url('/good.tar.gz')}", size: {len(good)},
          sha256: "{_sha(good)}", source: test, extract_to: .}}
    check: [labels/all.txt]
""")
    res, _, smk = _data_workflow(tmp_path)

    placed = res / "downloads/fake.tar.gz"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(bad)
    run = smk(res / "datasets/fake/.ready")
    assert run.returncode != 0
    assert f"sha256: expected {_sha(good)}, got {_sha(bad)}" in run.stderr
    aside = res / "downloads/fake.tar.gz.mismatch"
    assert aside.read_bytes() == bad and not placed.exists()
    assert not (res / "datasets/fake/labels").exists()
    assert not server.requests  # nothing was fetched: the hand-placed file was used, and refused

    run = smk(res / "datasets/fake/.ready")  # the rerun downloads the archive the catalog names
    assert run.returncode == 0, run.stderr[-3000:]
    assert (res / "datasets/fake/labels/all.txt").read_bytes() == b"cat\n"
    import json

    ready = json.loads((res / "datasets/fake/.ready").read_text())
    assert ready["files"]["fake.tar.gz"]["seen"]["sha256"] == _sha(good)
    assert ready["files"]["fake.tar.gz"]["expected"]["sha256"] == _sha(good)
