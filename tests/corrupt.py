"""Ways to damage a file the way disks, copies and people do, for the fault tests: a flipped
byte with the modification time kept, a truncation, a value rewritten through h5py (so the
chunk's checksum is valid again)."""

import os
from pathlib import Path

import h5py
import numpy as np


def _keep_mtime(path, change):
    st = os.stat(path)
    change()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def flip_byte(path, offset=None, dataset=None, chunk=0):
    """XOR one byte of ``path`` with 0x40, keeping its mtime (Snakemake sees nothing).  The byte
    is ``offset``, or the middle of chunk ``chunk`` of HDF5 dataset ``dataset``, or the middle of
    the file.  Returns the offset."""
    path = Path(path)
    if offset is None and dataset is not None:
        with h5py.File(path, "r") as h5:
            info = h5[dataset].id.get_chunk_info(chunk)
            offset = info.byte_offset + info.size // 2
    if offset is None:
        offset = path.stat().st_size // 2

    def change():
        with open(path, "r+b") as fh:
            fh.seek(offset)
            b = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([b[0] ^ 0x40]))

    _keep_mtime(path, change)
    return offset


def truncate(path, fraction=0.5):
    """Cut ``path`` to ``fraction`` of its size, keeping its mtime."""
    path = Path(path)
    size = path.stat().st_size
    _keep_mtime(path, lambda: os.truncate(path, int(size * fraction)))


def rewrite(path, dataset, row, value):
    """Set row ``row`` of ``dataset`` to ``value`` through h5py (checksum recomputed), keeping
    the mtime: damage only the values themselves can reveal."""

    def change():
        with h5py.File(path, "r+") as h5:
            ds = h5[dataset]
            ds[row] = np.full(ds.shape[1:], value, ds.dtype)

    _keep_mtime(path, change)
