"""Benchmark: the main job, `snakemake --cores 2 results/figures/v1_vs_v2.png`, from nothing.

    python benchmarks/inversion_main_job.py [--cores 2] [--configfile configs/test.yaml]
        [--workdir DIR] [--target results/figures/v1_vs_v2.png] [--snakefile Snakefile]
        [--json out.json]

Runs the target in an empty working directory (toy data generation, toy model training, token
caches, reconstructor training, scoring, figure: everything), offline, and prints the wall time
and the time of each rule summed over its jobs (from the rules' ``benchmark:`` files; rules
without one, such as gathers and figures, show under "other").  Then prints the similarity
summary and the paired SigLIP2 - SigLIP differences.  Target (issue 3): <= 10 minutes on 2 cores
with the default config; < 2 minutes with configs/test.yaml.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--configfile", default=None)
    ap.add_argument("--workdir", default=None, help="default: a fresh temporary folder")
    ap.add_argument("--target", default="results/figures/v1_vs_v2.png")
    ap.add_argument("--snakefile", default=str(ROOT / "Snakefile"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="cliplens-main-job-")
        workdir = tmp.name
    cmd = [sys.executable, "-m", "snakemake", "-s", args.snakefile, "-d", workdir,
           "--cores", str(args.cores), args.target]
    if args.configfile:
        cmd[5:5] = ["--configfile", str(Path(args.configfile).resolve())]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    print(" ".join(cmd), file=sys.stderr)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        print(out.stderr[-8000:], file=sys.stderr)
        print(f"FAILED after {wall:.1f} s", file=sys.stderr)
        return 1

    per_rule: dict[str, list[float]] = defaultdict(list)
    for path in glob.glob(os.path.join(workdir, "results", "benchmarks", "**", "*.tsv"),
                          recursive=True):
        rule = Path(path).relative_to(Path(workdir, "results", "benchmarks")).parts[0]
        with open(path) as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        per_rule[rule].append(float(row["s"]))
    jobs_s = sum(sum(v) for v in per_rule.values())
    print(f"\nmain job: {args.target} in {wall:.1f} s wall on {args.cores} cores"
          f" (config: {args.configfile or 'config.yaml'})")
    print(f"{'rule':32s} {'jobs':>4s} {'sum s':>8s} {'max s':>7s}")
    for rule, times in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        print(f"{rule:32s} {len(times):4d} {sum(times):8.1f} {max(times):7.1f}")
    print(f"{'(benchmarked jobs, summed)':32s} {'':4s} {jobs_s:8.1f}")

    tables = Path(workdir, "results", "tables", "inversion")
    for name in ("similarity.csv", "v1_vs_v2.csv"):
        if (tables / name).exists():
            print(f"\n{name}:\n" + (tables / name).read_text())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"wall_s": wall, "cores": args.cores, "config": args.configfile,
                       "per_rule": per_rule}, fh, indent=2)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
