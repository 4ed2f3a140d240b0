"""Benchmark: milliseconds per training step of each toy model, per attention kernel.

    python benchmarks/toy_step_speed.py [--config config.yaml] [--data results/data/toy/toy.h5]
        [--models clip-vit siglip-32 ...] [--threads 2] [--rounds 7] [--steps 15] [--pairs 4000]

Each model trains with its own config (batching, partial captions, image objective) on the
first ``--pairs`` pairs of the toy train split.  For every round and every kernel of
``cliplens.core.toy.training.ATTENTION_BACKENDS`` (in alternating order, so that both see the
same moments of a machine whose speed drifts) :func:`cliplens.core.toy.training.fit` runs ``--steps``
steps; a round's figure is its wall-clock seconds / steps.  Printed: the median over rounds
per kernel and the median of the per-round ratios default / math.  Without ``--data`` the toy
world is drawn from the config first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from cliplens.core.data.toy import read_split, write_toy_dataset
from cliplens.core.settings import settings_from_file
from cliplens.core.toy import world as toyworld
from cliplens.core.toy.batching import partial_caption_set
from cliplens.core.toy.models import build_toy_model
from cliplens.core.toy.training import ATTENTION_BACKENDS, fit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--data", default=None)
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--pairs", type=int, default=4000)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = settings_from_file(args.config)
    data = args.data
    if data is None:
        data = str(Path(tempfile.mkdtemp()) / "toy.h5")
        write_toy_dataset(data, toyworld.generate("toy", config.toy), {"dataset": "toy"})
    train = read_split(data, "train", keys=("images",))
    n = min(args.pairs, len(train["images"]))
    labels = {k: v[:n] for k, v in train["labels"].items()}
    models = args.models or list(config.toy_models)
    print(f"{args.threads} threads, {args.rounds} rounds x {args.steps} steps, {n} pairs; "
          "ms per step (median over rounds)")
    print(f"{'model':16s}" + "".join(f"{b:>10s}" for b in ATTENTION_BACKENDS) + "   default/math")
    for name in models:
        cfg = config.toy_models[name]
        train_cfg = cfg.train.replace(steps=args.steps)
        torch.manual_seed(0)
        toy = build_toy_model(name, cfg)
        pixels = toy.preprocess(train["images"][:n])
        tokens = toy.tokenize(list(train[f"captions_{cfg.captions}"][:n]))
        partial = partial_caption_set(toy, labels, cfg.train)
        ms = {b: [] for b in ATTENTION_BACKENDS}
        for r in range(args.rounds + 1):  # round 0 warms up
            order = ATTENTION_BACKENDS if r % 2 == 0 else ATTENTION_BACKENDS[::-1]
            for b in order:
                res = fit(toy, pixels, tokens, train_cfg, progress=False, labels=labels,
                          partial=partial, attention=b)
                if r:
                    ms[b].append(1000 * res["seconds"] / args.steps)
        ratio = statistics.median(d / m for d, m in zip(ms["default"], ms["math"]))
        print(f"{name:16s}" + "".join(f"{statistics.median(ms[b]):10.1f}"
                                      for b in ATTENTION_BACKENDS) + f"   {ratio:12.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
