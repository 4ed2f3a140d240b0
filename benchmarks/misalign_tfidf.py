"""Benchmark: study 004's caption misalignment (TF-IDF nearest partners) at growing scale.

Draws ``N`` rich toy captions with the toy world's own caption generator, then pairs a
fraction 0.8 of them with TF-IDF-similar partners (``cliplens.studies.purity.misalign.misalign``:
TF-IDF rows, sklearn's brute-force cosine ``NearestNeighbors`` queried block by block in chunks
of ``working_memory``).  Each N runs in a fresh process; printed: distinct captions, seconds,
peak RSS, and the memory of the published all-pairs similarity matrix (float32, N x N).

    python benchmarks/misalign_tfidf.py [--sizes 10000 30000 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(n: int) -> dict:
    import numpy as np

    from cliplens.core.toy.world import rich_caption, sample_labels
    from cliplens.studies.purity.misalign import misalign

    rng = np.random.default_rng(0)
    labels = sample_labels(n, rng)
    caps = [rich_caption({k: int(v[i]) for k, v in labels.items()}, rng) for i in range(n)]
    texts, index = np.unique(np.asarray(caps, dtype=object), return_inverse=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    new, chosen = misalign(index, list(texts), 0.8, seed=0)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"captions": n, "distinct": int(len(texts)), "changed": int(len(chosen)),
            "seconds": seconds, "peak_rss_mb": peak / 1024,
            "rss_before_mb": before / 1024, "all_pairs_gb": 4 * n ** 2 / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 100000])
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one)))
        return
    print("captions  distinct  seconds  peak RSS (MB, RSS before)  all-pairs float32")
    for n in a.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True,
                             text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['captions']:>8,}  {r['distinct']:>8,}  {r['seconds']:7.1f}  "
              f"{r['peak_rss_mb']:8.0f} ({r['rss_before_mb']:.0f})        "
              f"{r['all_pairs_gb']:10.1f} GB", flush=True)


if __name__ == "__main__":
    main()
