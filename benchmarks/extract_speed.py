"""Embedding extraction speed (images/s) on CPU: the toy CLIP and a random-weight ViT-B-16.

Times :func:`cliplens.core.caches.embeddings.extract_embeddings` end to end (PIL images -> the model's own
preprocessing -> image tower -> float16 HDF5 rows), median of ``--repeats`` runs after one
warm-up batch.  Images are random uint8 pictures: 64 px for the toy model (the toy world's
size) and 256 px for ViT-B-16 (a typical pre-resize size), so the preprocessing cost is
realistic for each.

    python benchmarks/extract_speed.py [--threads 1,2] [--batch-size 32] [--repeats 3]

Each model is timed at every torch thread count in ``--threads`` (default: 1 and all cores).
On a machine whose cores are busy with other work, multi-threaded torch can be far slower than
one thread (its worker threads spin-wait for descheduled peers); compare the rows.

``toy:clip-vit`` is measured only if ``results/models/toy/clip-vit`` exists (train it with
``snakemake --cores 2 results/models/toy/clip-vit``); otherwise it is skipped with a message.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cliplens.core.caches.embeddings import extract_embeddings  # noqa: E402
from cliplens.core.data.base import ImageDataset, to_pil  # noqa: E402


class RandomImages(ImageDataset):
    def __init__(self, n: int, side: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.arr = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
        self.name, self.split, self.labels = f"random{side}", "bench", None

    def __len__(self) -> int:
        return len(self.arr)

    def image(self, i):
        return to_pil(self.arr[i : i + 1])[0]

    def images(self, start, stop):
        return to_pil(self.arr[start:stop])


def measure(model, side: int, n: int, batch_size: int, repeats: int) -> dict:
    data = RandomImages(n, side)
    with tempfile.TemporaryDirectory() as tmp:
        warm = RandomImages(batch_size, side, seed=1)
        extract_embeddings(model, warm, Path(tmp) / "warm.h5", batch_size=batch_size,
                           progress=False)
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            extract_embeddings(model, data, Path(tmp) / f"run{r}.h5", batch_size=batch_size,
                               progress=False)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"n": n, "times": times, "median_s": med, "img_per_s": n / med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default=f"1,{torch.get_num_threads()}",
                    help="comma-separated torch thread counts to time")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", default="results", help="results root holding models/toy")
    ap.add_argument("--toy-images", type=int, default=1024)
    ap.add_argument("--vit-images", type=int, default=64)
    args = ap.parse_args()
    threads = list(dict.fromkeys(int(t) for t in args.threads.split(",")))

    from cliplens.core.models.registry import load_model

    toy_root = Path(args.results) / "models" / "toy"
    cases = [("toy:clip-vit", 64, args.toy_images), ("open_clip:ViT-B-16", 256, args.vit_images)]
    rows = []
    for spec, side, n in cases:
        if spec.startswith("toy:") and not (toy_root / spec[4:]).exists():
            print(f"skip {spec}: {toy_root / spec[4:]} does not exist (train it first: "
                  f"snakemake --cores 2 {toy_root / spec[4:]})")
            continue
        model = load_model(spec, toy_root=str(toy_root), device="cpu", hf_home=None)
        for t in threads:
            torch.set_num_threads(t)
            res = measure(model, side, n, args.batch_size, args.repeats)
            rows.append((spec, t, side, model.image_size, res))
            print(f"{spec}, {t} threads: " + ", ".join(f"{x:.2f}s" for x in res["times"])
                  + f" for {n} images")

    print(f"\nembedding extraction on CPU, batch {args.batch_size}, median of {args.repeats} "
          f"runs (preprocessing and float16 HDF5 output included)")
    print(f"{'model':<22} {'threads':>7} {'image px':>8} {'input px':>8} {'images':>7} "
          f"{'median s':>9} {'images/s':>9}")
    for spec, t, side, size, res in rows:
        print(f"{spec:<22} {t:>7} {side:>8} {size:>8} {res['n']:>7} {res['median_s']:>9.2f} "
              f"{res['img_per_s']:>9.1f}")


if __name__ == "__main__":
    main()
