"""Benchmark: SAE training throughput with the embeddings streamed from an HDF5 file.

A 512 -> 4096 TopK SAE (k = 32) trains for ``--steps`` steps of batch 256 on ``--rows`` random
unit vectors stored float16 in a chunked HDF5 dataset and read block by block, as
``cliplens.studies.sae.training.StreamedRows`` reads a cache, on ``--threads`` torch threads.
Prints samples per second and the share of the wall time spent outside the SAE step (reading
and converting the batches), median of ``--repeats`` runs.  With ``--overcomplete`` the
``overcomplete`` package's TopK SAE (``pip install -e '.[bench]'``) trains on the same batches,
read the same way, with the same optimiser, for the same steps (its ``train_sae``, monitoring
off).

    python benchmarks/sae_throughput.py [--rows 100000] [--steps 300] [--threads 2] [--repeats 3]
                                        [--overcomplete]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from cliplens.studies.sae.training import Normalised, StreamedRows, train_sae
from cliplens.studies.sae.variants import TopK


class H5Rows:
    """What StreamedRows reads: ``array(name)`` and ``read(name, rows)`` of one HDF5 file."""

    def __init__(self, path):
        self.h5 = h5py.File(path, "r")

    def array(self, name):
        return self.h5[name]

    def read(self, name, rows):
        return self.h5[name][int(rows[0]):int(rows[-1]) + 1]


class Timed:
    """Wraps a rows callable and adds up the seconds spent in it."""

    def __init__(self, rows):
        self.rows, self.n, self.dim, self.seconds = rows, rows.n, rows.dim, 0.0

    def __call__(self, idx):
        t = time.perf_counter()
        out = self.rows(idx)
        self.seconds += time.perf_counter() - t
        return out


def overcomplete_run(rows, steps: int, seed: int, block: int) -> float:
    """Wall seconds of ``steps`` steps of overcomplete's TopKSAE (512 -> 4096, top_k 32, Adam
    5e-4, MSE) on the batches ``train_sae`` would read."""
    import matplotlib
    import matplotlib.cm

    if not hasattr(matplotlib.cm, "get_cmap"):  # overcomplete 0.3.0 still calls it at import
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap
    from overcomplete.sae import TopKSAE
    from overcomplete.sae import train_sae as oc_train

    from cliplens.studies.sae.training import BlockOrder

    order = BlockOrder(rows.n, block, seed)

    class Batches:
        def __iter__(self):
            for s in range(steps):
                yield torch.as_tensor(rows(order.rows(s, 256)), dtype=torch.float32)

    torch.manual_seed(seed)
    sae = TopKSAE(512, 4096, top_k=32)
    opt = torch.optim.Adam(sae.parameters(), lr=5e-4)
    t = time.perf_counter()
    oc_train(sae, Batches(), lambda x, x_hat, *_: ((x - x_hat) ** 2).mean(), opt, nb_epochs=1,
             clip_grad=0, monitoring=0)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--overcomplete", action="store_true",
                    help="also time the overcomplete package's TopK SAE on the same batches")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    block = 4096
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "embeddings.h5"
        x = np.random.default_rng(0).standard_normal((args.rows, 512)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        with h5py.File(path, "w") as h5:
            h5.create_dataset("embeddings", data=x.astype(np.float16), chunks=(block, 512))
        rates, shares, other = [], [], []
        for r in range(args.repeats):
            rows = Timed(Normalised(StreamedRows(H5Rows(path), "embeddings", block)))
            sae = TopK(512, 4096, k=32, seed=r)
            t = time.perf_counter()
            train_sae(sae, rows, batch_size=256, epochs=args.steps * 256 / args.rows, lr=5e-4,
                      seed=r, block_rows=block, progress=False)
            wall = time.perf_counter() - t
            rates.append(args.steps * 256 / wall)
            shares.append(rows.seconds / wall)
            print(f"run {r + 1}: {rates[-1]:,.0f} samples/s, {100 * shares[-1]:.1f} % of the "
                  f"time reading batches")
            if args.overcomplete:
                oc = Normalised(StreamedRows(H5Rows(path), "embeddings", block))
                other.append(args.steps * 256 / overcomplete_run(oc, args.steps, r, block))
                print(f"      overcomplete TopKSAE: {other[-1]:,.0f} samples/s")
    print(f"median: {statistics.median(rates):,.0f} samples/s; {100 * statistics.median(shares):.1f} %"
          f" of the wall time outside the SAE step ({args.threads} threads, {args.steps} steps "
          f"of 256, 512 -> 4096 TopK k=32, float16 HDF5 streamed in blocks of {block})")
    if other:
        print(f"overcomplete TopKSAE, same batches: median {statistics.median(other):,.0f} "
              f"samples/s; cliplens / overcomplete = "
              f"{statistics.median(rates) / statistics.median(other):.2f}")


if __name__ == "__main__":
    main()
