"""Benchmark: time to draw and write each toy dataset at the default config's size.

    python benchmarks/toy_world.py [--repeats 3]

Prints the median wall time of generation and of the HDF5 write per dataset.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from cliplens.core.data.toy import write_toy_dataset
from cliplens.core.settings import settings_from_file
from cliplens.core.toy import world as toyworld

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = settings_from_file(ROOT / "config.yaml").toy
    print(f"{'dataset':16s} {'images':>7s} {'draw s':>8s} {'write s':>8s} {'MB':>6s}")
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name in toyworld.TOY_DATASETS:
            draw, write = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                splits = toyworld.generate(name, cfg)
                t1 = time.perf_counter()
                path = Path(tmp) / f"{name}.h5"
                write_toy_dataset(path, splits, {"dataset": name})
                write.append(time.perf_counter() - t1)
                draw.append(t1 - t0)
            n = sum(len(s) for s in splits.values())
            d, w = statistics.median(draw), statistics.median(write)
            total += d + w
            print(f"{name:16s} {n:7d} {d:8.2f} {w:8.2f} {path.stat().st_size / 1e6:6.1f}")
    print(f"{'total':16s} {'':7s} {total:17.2f}")


if __name__ == "__main__":
    main()
