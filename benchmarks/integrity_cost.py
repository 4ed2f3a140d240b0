"""What the integrity checks of issue 14 cost: SHA-256 of a file and HDF5's Fletcher-32 filter.

* ``sha256``: seconds to hash a ``--gib`` GiB file with :func:`cliplens.core.io.sha256_file`
  (the digest of toy models, reconstructors, checkpoints and downloaded archives), against a
  plain read of the same file in 1 MiB blocks: median of ``--repeats`` runs after one warm-up,
  the file in the page cache (so the figures are the hash's own cost, not the disk's).
* ``fletcher32``: seconds to write and to read back a ``--rows`` x ``--dim`` float32 row cache
  (the shape of an embedding cache) with :func:`cliplens.core.caches.rows.create_rows`
  (chunked, Fletcher-32) against the same chunks without the filter; median of ``--repeats``.

    python benchmarks/integrity_cost.py [--gib 1] [--rows 200000] [--dim 768] [--repeats 3]
        [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np

from cliplens.core.caches.rows import create_rows
from cliplens.core.io import sha256_file
from timing import median_seconds


def plain_read(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(1 << 20):
            pass


def bench_sha256(folder: Path, gib: float, repeats: int) -> None:
    path = folder / "blob.bin"
    block = np.random.default_rng(0).bytes(1 << 20)
    with open(path, "wb") as fh:
        for _ in range(int(gib * 1024)):
            fh.write(block)
    size = path.stat().st_size / 2**30
    t_read = median_seconds(lambda: plain_read(path), repeats)
    t_hash = median_seconds(lambda: sha256_file(path), repeats)
    print(f"sha256 of {size:.2f} GiB: median {t_hash:.2f} s ({size / t_hash * 1024:.0f} MiB/s); "
          f"plain read {t_read:.2f} s; ratio {t_hash / t_read:.1f}x")
    path.unlink()


def bench_fletcher(folder: Path, rows: int, dim: int, repeats: int) -> None:
    data = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    checked = folder / "checked.h5"
    plain = folder / "plain.h5"

    def write(path: Path, check: bool) -> None:
        with h5py.File(path, "w") as h5:
            if check:
                ds = create_rows(h5, "x", data.shape, data.dtype)
            else:  # the same chunks, no filter
                chunks = create_rows(h5.create_group("probe"), "x", (rows, dim), data.dtype).chunks
                ds = h5.create_dataset("x", shape=data.shape, dtype=data.dtype, chunks=chunks)
            ds[...] = data

    def read(path: Path) -> None:
        with h5py.File(path, "r") as h5:
            h5["x"][...]

    mib = data.nbytes / 2**20
    for name, path, check in (("fletcher32", checked, True), ("no filter", plain, False)):
        tw = median_seconds(lambda p=path, c=check: write(p, c), repeats)
        tr = median_seconds(lambda p=path: read(p), repeats)
        print(f"{name:>10}: {rows} x {dim} float32 ({mib:.0f} MiB): write median {tw:.2f} s, "
              f"read median {tr:.2f} s")
        if check:
            w_checked, r_checked = tw, tr
    print(f"fletcher32 / no filter: write {w_checked / tw:.2f}x, read {r_checked / tr:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        print(f"cpus {os.cpu_count()}, folder {folder}")
        bench_sha256(folder, args.gib, args.repeats)
        bench_fletcher(folder, args.rows, args.dim, args.repeats)


if __name__ == "__main__":
    main()
