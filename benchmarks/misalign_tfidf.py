"""Benchmark: study 004's caption misalignment (TF-IDF nearest partners) at growing scale.

Draws ``N`` rich toy captions with the toy world's own caption generator, then pairs a
fraction 0.8 of them with TF-IDF-similar partners (``cliplens.studies.purity.misalign.misalign``
with ``--search exact``: sklearn's brute-force cosine ``NearestNeighbors``; or ``ivf``: the
inverted-file index of ``cliplens.studies.purity.neighbours``).  Each N runs in a fresh
process; printed: distinct captions, rows moved, seconds, peak RSS, the memory of the published
all-pairs similarity matrix (float32, N x N), the mean TF-IDF cosine of the swapped partners
(``misalign`` returns it) and, for ``ivf``, recall@10 against the exact search on 500 random
rows (computed after the timing, which does not count it).

    python benchmarks/misalign_tfidf.py [--sizes 10000 30000 100000] [--search exact|ivf]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(n: int, search: str, probes: int) -> dict:
    import numpy as np

    from cliplens.core.toy.world import rich_caption, sample_labels
    from cliplens.studies.purity.misalign import misalign

    rng = np.random.default_rng(0)
    labels = sample_labels(n, rng)
    caps = [rich_caption({k: int(v[i]) for k, v in labels.items()}, rng) for i in range(n)]
    texts, index = np.unique(np.asarray(caps, dtype=object), return_inverse=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    new, chosen, cosine = misalign(index, list(texts), 0.8, seed=0, search=search,
                                   probes=probes)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"captions": n, "distinct": int(len(texts)), "changed": int(len(chosen)),
           "seconds": seconds, "peak_rss_mb": peak / 1024,
           "rss_before_mb": before / 1024, "all_pairs_gb": 4 * n ** 2 / 1e9}
    out["partner_cosine"] = cosine
    if search == "ivf":
        out["recall10"] = recall(caps, probes)
    return out


def recall(caps, probes: int, queries: int = 500) -> float:
    """recall@10 of the index (as ``misalign`` builds it, seed 0) against the exact search."""
    import numpy as np

    from cliplens.studies.purity.misalign import tfidf_rows
    from cliplens.studies.purity.neighbours import exact_neighbours, ivf_neighbours, recall_at

    rows = tfidf_rows(caps)
    q = np.random.default_rng(1).choice(rows.shape[0], queries, replace=False)
    exact = exact_neighbours(rows, 11)(q)
    exact = np.array([[j for j in r if j != i][:10] for i, r in zip(q, exact)])
    return recall_at(ivf_neighbours(rows, 10, probes=probes)[q], exact, 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 100000])
    ap.add_argument("--search", choices=["exact", "ivf"], default="exact")
    ap.add_argument("--probes", type=int, default=16, help="cells probed by the ivf search")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.search, a.probes)))
        return
    print(f"search {a.search}" + (f", {a.probes} probes" if a.search == "ivf" else ""))
    print("captions  distinct  moved  seconds  peak RSS (MB, RSS before)  all-pairs float32"
          "  partner cos  recall@10")
    for n in a.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--search", a.search,
                              "--probes", str(a.probes)], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['captions']:>8,}  {r['distinct']:>8,}  {r['changed'] / n:5.1%}  "
              f"{r['seconds']:7.1f}  {r['peak_rss_mb']:8.0f} ({r['rss_before_mb']:.0f})        "
              f"{r['all_pairs_gb']:10.1f} GB  {r['partner_cosine']:11.3f}  "
              f"{r.get('recall10', float('nan')):.3f}", flush=True)


if __name__ == "__main__":
    main()
