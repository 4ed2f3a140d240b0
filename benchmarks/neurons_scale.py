"""Study 003 at the published shapes, on this machine's CPU, with random weights (no network).

* ``pairs``: open_clip ``RN50x16`` (48 heads x 3,072 channels -> 768) at 384 px, ``--images``
  images: seconds of ``encode_image`` and of :func:`decompose_pairs` (median of ``--repeats``
  after a warm-up) and their ratio; the store's bytes per image (scalars, float16 and float32)
  and the directions' bytes, extrapolated to 1,000 images against the published float32 memmap
  of 1000 x 48 x 3072 x 768 (453 GB); the closed-form components of the first ``--pairs`` pairs
  against the brute-force SVD of their materialised vectors (min cosine of pc0, max relative
  error of the norms).
* ``neurons``: open_clip ``ViT-B-32``, neurons of block 8, batch ``--vit-batch``: seconds of
  ``encode_image`` against recording plus both variants (exact, published), and the share of
  the exact second-order part carried by chains of attention layers (as measured on random
  ViT-B-32 in issue 15: 27-29 %).
* ``svd``: a synthetic float16 store of ``--units`` x ``--width`` rows (ViT-B-32 neurons:
  3,072 x 512) at N and 2N images (``--svd-images``), :func:`components` over chunk-aligned
  blocks in a fresh process each: peak RSS (VmHWM) and units/s.
* ``sparse``: OMP of ``--directions`` random directions with k = 64 over a random 30,000 x 768
  atom-normalised dictionary: directions/s of the batched OMP and of sklearn's
  ``orthogonal_mp`` (on an eighth of them), and whether their supports agree.

    python benchmarks/neurons_scale.py [--only pairs,neurons,svd,sparse] [--images 4]
        [--repeats 3] [--pairs 512] [--vit-batch 2] [--svd-images 200] [--directions 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from timing import median_seconds  # noqa: E402

PUBLISHED_BYTES = 1000 * 48 * 3072 * 768 * 4


def random_model(name: str):
    from cliplens.core.models.registry import load_model

    torch.manual_seed(0)
    return load_model(f"open_clip:{name}", device="cpu")


def bench_pairs(args) -> None:
    from cliplens.studies.neurons.components import (array_blocks, components_dense,
                                                     pair_components)
    from cliplens.studies.neurons.pairs import decompose_pairs

    model = random_model("RN50x16")
    px = torch.randn(args.images, 3, model.image_size, model.image_size)
    with torch.inference_mode():
        t_enc = median_seconds(lambda: model.encode_image(px), args.repeats)
        t_dec = median_seconds(lambda: decompose_pairs(model, px), args.repeats)
        dec = decompose_pairs(model, px)
        emb = model.encode_image(px)
    err = (dec.embedding() - emb).abs().max().item()
    h, c, d = dec.directions.shape
    per_image = {dt: h * c * np.dtype(dt).itemsize for dt in ("float16", "float32")}
    dirs = h * c * d * 4
    print(f"pairs RN50x16 at {model.image_size}px, {args.images} images: encode_image "
          f"{t_enc:.2f} s, decompose_pairs {t_dec:.2f} s, ratio {t_dec / t_enc:.2f}; "
          f"max |sum of terms - embedding| {err:.2e}")
    for dt, b in per_image.items():
        total = 1000 * b
        print(f"  store of 1000 images, {dt} scalars: {total / 1e9:.3f} GB "
              f"({100 * total / PUBLISHED_BYTES:.3f} % of the published 453 GB); with the "
              f"float32 directions ({dirs / 1e9:.3f} GB) {100 * (total + dirs) / PUBLISHED_BYTES:.3f} %")
    # closed form against the materialised vectors of the first pairs
    s = dec.scalars.double().numpy().reshape(args.images, h * c)[:, :args.pairs]
    u = dec.directions.double().numpy().reshape(h * c, d)[:args.pairs]
    k = max(1, args.images - 1)
    got = pair_components(array_blocks(s[:, None, :], 2), u[None], k)
    ref = components_dense(s[..., None] * u[None], k)
    # a pair whose float32 scalars vary over the images only by a few ulps (relative to its
    # mean) has tied norms and no direction to speak of: its top-k and sign are decided by
    # rounding in either path
    scale = np.linalg.norm(ref.mean, axis=1) + ref.top_norms[:, 0]
    live = ref.top_norms[:, -1] > 1e-5 * scale  # float32 scalars: ~100 ulps
    cos = (got.pc0 * ref.pc0).sum(1)[live]
    rel = np.abs(got.top_norms - ref.top_norms).max() / ref.top_norms.max()
    print(f"  closed-form components of {args.pairs} pairs vs brute-force SVD (top-{k}): "
          f"min cosine {cos.min():.7f} over the {live.sum()} pairs whose k-th centred norm "
          f"exceeds 1e-5 of their |mean| + largest norm ({(~live).sum()} do not); max "
          f"relative norm error "
          f"{rel:.1e}")


def bench_neurons(args) -> None:
    from cliplens.studies.neurons.second_order import (exact_effects, published_effects,
                                                       record_neurons)

    model = random_model("ViT-B-32")
    px = torch.randn(args.vit_batch, 3, model.image_size, model.image_size)
    with torch.inference_mode():
        t_enc = median_seconds(lambda: model.encode_image(px), args.repeats)

        def both():
            rec = record_neurons(model, px, 8)
            return exact_effects(model, rec), published_effects(model, rec)
        t_both = median_seconds(both, args.repeats)
        rec = record_neurons(model, px, 8)
        exact = exact_effects(model, rec)
        second = exact - exact_effects(model, rec, "direct")
        chains = second - exact_effects(model, rec, "single")
    share = (chains.norm(dim=-1) ** 2).sum() / (second.norm(dim=-1) ** 2).sum()
    print(f"neurons ViT-B-32 block 8, batch {args.vit_batch}: encode_image {t_enc:.3f} s, "
          f"record + exact + published {t_both:.2f} s ({t_both / t_enc:.0f}x); chains carry "
          f"{100 * share.sqrt().item():.1f} % of the second-order norm (||chains|| / "
          f"||exact - direct||)")


def _svd_child(path: str, k: int) -> None:
    import h5py

    from cliplens.studies.neurons.components import array_blocks, components

    def status(key):
        return int([ln for ln in open("/proc/self/status") if ln.startswith(key)][0].split()[1])

    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = status("VmRSS")
    with h5py.File(path, "r") as h5:
        ds = h5["x"]
        t0 = time.perf_counter()
        comp = components(array_blocks(ds, ds.chunks[0]), k)
        dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "peak_mib": status("VmHWM") / 1024,
                      "extra_mib": (status("VmHWM") - before) / 1024, "units": comp.mean.shape[0]}))


def bench_svd(args, folder: str) -> None:
    import h5py

    from cliplens.core.caches.rows import create_rows

    rng = np.random.default_rng(0)
    for n in (args.svd_images, 2 * args.svd_images):
        path = os.path.join(folder, f"store{n}.h5")
        with h5py.File(path, "w") as h5:
            ds = create_rows(h5, "x", (n, args.units, args.width), "float16")
            for a in range(0, n, 16):
                b = min(n, a + 16)
                ds[a:b] = rng.standard_normal((b - a, args.units, args.width), dtype=np.float32)
        size = os.path.getsize(path) / 2**30
        out = subprocess.run([sys.executable, __file__, "--svd-child", path, "--k",
                              str(min(args.k, n))],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"svd {n} images x {args.units} units x {args.width} (float16 store "
              f"{size:.2f} GiB): {r['seconds']:.1f} s, {r['units'] / r['seconds']:.0f} units/s, "
              f"peak RSS {r['peak_mib']:.0f} MiB ({r['extra_mib']:.0f} MiB above the process "
              "before the pass)")
        os.unlink(path)


def bench_sparse(args) -> None:
    from cliplens.studies.neurons.sparse import sparse_codes, text_dictionary

    rng = np.random.default_rng(0)
    dic = text_dictionary(rng.standard_normal((30000, 768)).astype(np.float32))
    y = rng.standard_normal((args.directions, 768))
    t0 = time.perf_counter()
    batched = sparse_codes(y, dic, 64, method="batched")
    t_b = time.perf_counter() - t0
    few = max(1, args.directions // 8)
    t0 = time.perf_counter()
    ref = sparse_codes(y[:few], dic, 64, method="sklearn")
    t_s = time.perf_counter() - t0
    same = ((batched[:few] != 0) == (ref != 0)).all()
    print(f"sparse, k = 64 over 30,000 x 768 texts: batched OMP {args.directions} directions "
          f"in {t_b:.1f} s = {args.directions / t_b:.2f} directions/s; sklearn orthogonal_mp "
          f"(no Gram) {few} in {t_s:.1f} s = {few / t_s:.2f} directions/s; ratio "
          f"{(args.directions / t_b) / (few / t_s):.1f}x; same supports: {bool(same)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="pairs,neurons,svd,sparse")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--vit-batch", type=int, default=2)
    ap.add_argument("--svd-images", type=int, default=200)
    ap.add_argument("--units", type=int, default=3072)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--directions", type=int, default=32)
    ap.add_argument("--svd-child")
    ap.add_argument("--k", type=int, default=50)
    args = ap.parse_args()
    if args.svd_child:
        _svd_child(args.svd_child, args.k)
        return
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    only = set(args.only.split(","))
    if "pairs" in only:
        bench_pairs(args)
    if "neurons" in only:
        bench_neurons(args)
    if "svd" in only:
        with tempfile.TemporaryDirectory() as tmp:
            bench_svd(args, tmp)
    if "sparse" in only:
        bench_sparse(args)


if __name__ == "__main__":
    main()
