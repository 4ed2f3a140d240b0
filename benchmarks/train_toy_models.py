"""Benchmark: train every toy model of a config once; report time and zero-shot accuracy.

    python benchmarks/train_toy_models.py [--config config.yaml] [--data results/data/toy/toy.h5]
        [--models clip-vit siglip-32 ...] [--threads 2] [--json out.json] [--save-root DIR]
        [--set clip-vit.vision.pos_embed=sin_cos_2d --set clip-vit.train.steps=600 ...] [--probe]
        [--captioned]

``--set NAME.KEY.SUBKEY=VALUE`` (VALUE parsed as YAML) overrides one key of ``toy_models.NAME``
for this run only, to try a recipe without editing the config.

Without ``--data`` the toy world is drawn from the config's ``toy`` section first (about 25 s).
Accuracies are zero-shot top-1 on the toy *test* split with the toy world's class names and
templates (the classifier is the normalised mean of normalised template embeddings).
``--probe`` also fits a logistic regression per factor
(``cliplens.studies.heads.analysis.probe_factors``)
on the *val* image embeddings and scores it on *test*: what the image embedding encodes linearly, against
what zero-shot prompts recover from it.  ``--captioned`` scores each factor with prompts that
also name the image's other (true) factors, in the rich captions' first template: how well the
embeddings align with whole captions, against one-factor prompts.
Times are wall-clock seconds with ``--threads`` torch threads: ``prep`` builds the model,
preprocesses the train images and tokenises the captions; ``train`` is the optimisation loop.
Targets (TOY_WORLD.md), clip-vit: colour >= 0.95, shape >= 0.85, position >= 0.90,
size >= 0.90; every model <= 180 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from cliplens.core.config import load_config
from cliplens.core.data.toy import read_split, write_toy_dataset
from cliplens.core.settings import ToySettings
from cliplens.core.toy import world as toyworld
from cliplens.core.text.zeroshot import toy_classifier, toy_zeroshot
from cliplens.core.toy.training import embed_images, save_toy_model, train_toy

FACTORS = ("colour", "shape", "position", "size")
TARGETS = {"colour": 0.95, "shape": 0.85, "position": 0.90, "size": 0.90}


def apply_override(toy_models: dict, item: str) -> None:
    """``NAME.KEY.SUBKEY=VALUE`` -> ``toy_models[NAME][KEY][SUBKEY] = yaml(VALUE)``."""
    import yaml

    key, sep, value = item.partition("=")
    parts = key.split(".")
    if not sep or len(parts) < 2 or parts[0] not in toy_models:
        raise SystemExit(f"--set {item!r}: want NAME.KEY=VALUE with NAME one of {list(toy_models)}")
    node = toy_models[parts[0]]
    for p in parts[1:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = yaml.safe_load(value)


def linear_probe(toy, val, test, test_emb) -> dict[str, float]:
    """Test accuracy per factor of :func:`cliplens.studies.heads.analysis.probe_factors` (a logistic
    regression on standardised features) fitted on the val split's image embeddings;
    ``test_emb`` [N, D] are the test split's."""
    from cliplens.studies.heads.analysis import probe_factors

    xv = embed_images(toy, toy.preprocess(val["images"])).numpy()
    probes = probe_factors(xv, {f: val["labels"][f] for f in FACTORS}, test_emb.numpy(),
                           test["labels"])
    return {f: round(p["accuracy"], 4) for f, p in probes.items()}


def captioned_accuracy(toy, test, img) -> dict[str, float]:
    """Zero-shot accuracy per factor when the prompt names the image's other factors.

    For test image i and factor f, the candidates are the first rich caption template filled
    with the image's true labels (canonical phrases) except f, which takes each of f's values;
    the prediction is the candidate whose text embedding has the largest cosine with the image
    embedding.  Against the one-factor prompts of :func:`toy_zeroshot`, this separates
    what the image embedding holds (aligned with whole captions) from how well one-factor
    prompts transfer to it.  ``img`` [N, D] are the test images' normalised embeddings.
    """
    import numpy as np

    lab = {k: np.asarray(v) for k, v in test["labels"].items() if k in toyworld.FACTORS}
    words = {k: toyworld.classnames(k) for k in lab}
    out = {}
    for f in FACTORS:
        rows = [[toyworld.RICH_TEMPLATES[0].format(**{k: (words[k][c] if k == f else
                                                           words[k][lab[k][i]]) for k in lab})
                 for c in range(len(words[f]))] for i in range(len(img))]
        unique = sorted({t for r in rows for t in r})
        emb = toy_classifier(toy, unique, ("{}",))  # [U, D], normalised
        at = {t: j for j, t in enumerate(unique)}
        cand = emb[torch.tensor([[at[t] for t in r] for r in rows])]  # [N, C, D]
        pred = torch.einsum("ncd,nd->nc", cand, img).argmax(1).numpy()
        out[f] = round(float(np.mean(pred == lab[f])), 4)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--data", default=None, help="toy.h5 (default: draw it from the config)")
    ap.add_argument("--models", nargs="*", default=None, help="names (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the results here as JSON")
    ap.add_argument("--save-root", default=None, help="also save each model under DIR/NAME")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--probe", action="store_true",
                    help="also a linear probe per factor (val -> test image embeddings)")
    ap.add_argument("--captioned", action="store_true",
                    help="also zero-shot with prompts that name the image's other factors")
    ap.add_argument("--set", action="append", default=[], metavar="NAME.KEY=VALUE",
                    help="override toy_models.NAME.KEY (dotted; VALUE is YAML), repeatable")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    data = args.data
    tmp = None
    if data is None:
        tmp = tempfile.TemporaryDirectory()
        data = os.path.join(tmp.name, "toy.h5")
        t0 = time.perf_counter()
        world = toyworld.generate("toy", ToySettings.from_dict(cfg["toy"]))
        write_toy_dataset(data, world, {"dataset": "toy"})
        print(f"drew the toy world in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    train = read_split(data, "train", keys=("images",))
    val = read_split(data, "val", keys=("images",))
    test = read_split(data, "test", keys=("images",))
    for item in args.set:
        apply_override(cfg["toy_models"], item)
    names = args.models or list(cfg["toy_models"])

    rows = []
    for name in names:
        toy, meta = train_toy(name, cfg["toy_models"][name], train, progress=not args.quiet)
        meta["zeroshot"] = toy_zeroshot(toy, val)  # on val, as the workflow's training job
        pixels = toy.preprocess(test["images"])
        acc = toy_zeroshot(toy, test, factors=FACTORS, pixels=pixels)
        emb = embed_images(toy, pixels) if args.probe or args.captioned else None
        probe = linear_probe(toy, val, test, emb) if args.probe else None
        captioned = captioned_accuracy(toy, test, emb) if args.captioned else None
        if args.save_root:
            save_toy_model(toy, meta, os.path.join(args.save_root, name))
        row = {"name": name, "family": meta["family"], "captions": meta["captions"],
               "image_size": meta["image_size"], "parameters": meta["parameters"],
               "steps": meta["steps"], "prep_s": meta["prep_seconds"],
               "train_s": meta["train_seconds"], "final_loss": meta["final_loss"],
               "test": acc, "val": meta.get("zeroshot", {})}
        if probe is not None:
            row["probe"] = probe
        if captioned is not None:
            row["captioned"] = captioned
        rows.append(row)
        print(f"{name}: train {row['train_s']:.1f} s, test {acc}"
              + (f", probe {probe}" if probe else "")
              + (f", captioned {captioned}" if captioned else ""), file=sys.stderr, flush=True)

    head = (f"{'model':<14} {'family':<8} {'capt':<5} {'px':>3} {'params':>9} {'steps':>5} "
            f"{'prep s':>6} {'train s':>7} {'loss':>6} " + " ".join(f"{f:>8}" for f in FACTORS))
    print(f"\nthreads={args.threads}, torch {torch.__version__}; zero-shot top-1 on the test split")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name']:<14} {r['family']:<8} {r['captions']:<5} {r['image_size']:>3} "
              f"{r['parameters']:>9,} {r['steps']:>5} {r['prep_s']:>6.1f} {r['train_s']:>7.1f} "
              f"{r['final_loss']:>6.3f} " + " ".join(f"{r['test'][f]:>8.3f}" for f in FACTORS))
        if "probe" in r:
            print(f"{'  linear probe':<66} " + " ".join(f"{r['probe'][f]:>8.3f}" for f in FACTORS))
        if "captioned" in r:
            print(f"{'  other factors named':<66} "
                  + " ".join(f"{r['captioned'][f]:>8.3f}" for f in FACTORS))
    vit = next((r for r in rows if r["name"] == "clip-vit"), None)
    if vit is not None:
        ok = {f: vit["test"][f] >= t for f, t in TARGETS.items()}
        print(f"clip-vit targets {TARGETS}: {'met' if all(ok.values()) else 'MISSED ' + str(ok)}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"threads": args.threads, "torch": torch.__version__, "rows": rows}, fh,
                      indent=1)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
