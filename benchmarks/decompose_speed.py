"""Speed and peak memory of :func:`cliplens.studies.heads.decompose.decompose` against plain ``encode_image`` on CPU.

For each model (random weights, no network): the toy ``clip-vit`` architecture of config.yaml,
open_clip ``ViT-B-16`` and (``--siglip``) a SigLIP base vision tower, at one batch size
(default 8), under ``torch.inference_mode()``:

* images/s of ``encode_image(pixels)`` and of ``decompose(pixels)`` with ``per_token`` False and
  True (all layers kept), median of ``--repeats`` (toy: 20x) timed runs after one warm-up, and
  the ratio
  decompose / encode in time (target <= 1.5 for ``per_token=False``);
* peak extra memory of one call: each call runs in a fresh subprocess that loads the model,
  builds the batch, resets the peak resident set (Linux ``/proc/self/clear_refs``), runs the
  call once and reads the peak (``VmHWM``); peak minus the resident set before the call is the
  call's peak extra memory (MiB).

    python benchmarks/decompose_speed.py [--batch-size 8] [--repeats 5] [--threads 1] [--siglip]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from cliplens.studies.heads.decompose import decompose  # noqa: E402

MODES = ("encode", "decompose", "decompose_per_token")


def build(name: str):
    """A ClipModel with random weights."""
    if name == "toy:clip-vit":
        from cliplens.core.models.open_clip_adapter import OpenClipModel
        from cliplens.core.toy.models import build_toy_model

        torch.manual_seed(0)
        toy = build_toy_model("clip-vit", {"library": "open_clip", "family": "clip"})
        return OpenClipModel(name, toy.model.eval(), toy.transform, toy.tokenizer, family="clip",
                             embed_dim=toy.model_cfg["embed_dim"])
    if name == "open_clip:ViT-B-16":
        from cliplens.core.models.registry import load_model

        return load_model(name)
    if name == "siglip-base":
        import transformers as T

        from cliplens.core.models.hf_adapter import HFClipModel

        torch.manual_seed(0)
        text = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, max_position_embeddings=8, pad_token_id=0,
                    bos_token_id=None, eos_token_id=1)
        model = T.SiglipModel(T.SiglipConfig(text_config=text,
                                             vision_config=T.SiglipVisionConfig().to_dict()))
        return HFClipModel(name, model.eval(), T.SiglipImageProcessor(), None)
    raise ValueError(name)


def call(model, pixels, mode: str):
    if mode == "encode":
        return model.encode_image(pixels)
    return decompose(model, pixels, per_token=(mode == "decompose_per_token"))


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def child(name: str, mode: str, batch: int, threads: int) -> None:
    """Print the peak extra memory (MiB) of one call as JSON: reset the peak resident set
    (VmHWM, via /proc/self/clear_refs) after loading the model, run the call, read the peak."""
    torch.set_num_threads(threads)
    model = build(name)
    pixels = torch.randn(batch, 3, model.image_size, model.image_size)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before, key = _status_kib("VmRSS"), "VmHWM"
    except OSError:  # no resettable peak: ru_maxrss (KiB on Linux), exact if the call sets the peak
        before, key = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, None
    with torch.inference_mode():
        call(model, pixels, mode)
    after = _status_kib(key) if key else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": (after - before) / 1024}))


def peak_mib(name: str, mode: str, batch: int, threads: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", name, mode, "--batch-size",
                          str(batch), "--threads", str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def time_modes(model, pixels, repeats: int) -> dict[str, float]:
    """Median seconds per call of each mode; the modes take turns in every repeat, so a busy
    machine slows them alike."""
    times: dict[str, list[float]] = {m: [] for m in MODES}
    with torch.inference_mode():
        for mode in MODES:
            call(model, pixels, mode)  # warm-up
        for _ in range(repeats):
            for mode in MODES:
                t = time.perf_counter()
                call(model, pixels, mode)
                times[mode].append(time.perf_counter() - t)
    return {m: statistics.median(v) for m, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--siglip", action="store_true", help="also time a SigLIP base vision tower")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.batch_size, args.threads)
        return

    torch.set_num_threads(args.threads)
    names = ["toy:clip-vit", "open_clip:ViT-B-16"] + (["siglip-base"] if args.siglip else [])
    print(f"CPU, {args.threads} thread(s), batch {args.batch_size}, median of {args.repeats} "
          f"(toy: {20 * args.repeats}) interleaved runs (torch {torch.__version__})")
    print(f"{'model':<20} {'mode':<21} {'img/s':>8} {'x encode':>9} {'peak MiB':>9}")
    for name in names:
        model = build(name)
        pixels = torch.randn(args.batch_size, 3, model.image_size, model.image_size)
        if name.startswith("toy:"):
            v = model.model.visual
            print(f"# {name}: {len(v.transformer.resblocks)} layers, width {v.transformer.width}, "
                  f"{v.transformer.resblocks[0].attn.num_heads} heads, {model.image_size} px, "
                  f"{v.grid_size[0] * v.grid_size[1] + 1} tokens")
        repeats = args.repeats * (20 if name.startswith("toy:") else 1)  # ms-scale calls
        secs = time_modes(model, pixels, repeats)
        for mode in MODES:
            sec, base = secs[mode], secs["encode"]
            mem = peak_mib(name, mode, args.batch_size, args.threads)
            print(f"{name:<20} {mode:<21} {args.batch_size / sec:8.1f} {sec / base:9.2f} "
                  f"{mem:9.1f}", flush=True)


if __name__ == "__main__":
    main()
