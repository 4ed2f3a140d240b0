"""Study 002 jobs of part 1 (``rules/sae.smk``): train one SAE on an embedding cache
and save it; score it on a zero-shot task's embeddings (metrics, CLIP vs CLIP+SAE).

An SAE is saved as ``{out}/sae.safetensors`` (weights) and ``{out}/sae.json`` (its settings,
the cache it was trained on, the training record and the weights' SHA-256; written last), and
loaded back only when the digest matches.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ...core.caches.rows import RowCache
from ...core.io import atomic_path, library_versions, sha256_file, write_json_atomic
from ...core.models.storage import DIGESTS, verify_digests
from .training import MemoryRows, Normalised, StreamedRows, train_sae
from .variants import SAE, build_sae

log = logging.getLogger("cliplens")

WEIGHTS_FILE = "sae.safetensors"
META_FILE = "sae.json"
CHECKPOINT_FILE = "last.pt"


def save_sae(sae: SAE, meta: Mapping[str, Any], out_dir: str | os.PathLike) -> None:
    """The weights, then the JSON (settings, ``meta``, the weights' digest) atomically."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    write_json_atomic(out_dir / META_FILE, {**meta, "settings": sae.settings(),
                                            DIGESTS: {WEIGHTS_FILE: sha256_file(
                                                out_dir / WEIGHTS_FILE)}})


def load_sae(out_dir: str | os.PathLike, device: str = "cpu", spec: str | None = None
             ) -> tuple[SAE, dict[str, Any]]:
    """(SAE in eval mode, its metadata); weights whose SHA-256 differs from the recorded one
    raise :class:`~cliplens.core.io.CorruptFileError`, and an SAE of another model than
    ``spec`` (when given) a ValueError."""
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    meta = json.loads((out_dir / META_FILE).read_text())
    if spec is not None and meta.get("model") != spec:
        raise ValueError(f"{out_dir} holds an SAE of {meta.get('model')!r}, not {spec!r}")
    verify_digests(out_dir, meta.get(DIGESTS, {}), what="SAE")
    sae = build_sae(meta["settings"])
    sae.load_state_dict(load_file(str(out_dir / WEIGHTS_FILE)))
    return sae.to(device).eval(), meta


def run_train_sae(*, spec: str, cache: str, sae: Mapping[str, Any], train: Mapping[str, Any],
                  out_dir: str, device: str = "cpu", progress: bool = True, on_step=None
                  ) -> dict[str, Any]:
    """Train the SAE ``sae`` (its variant's settings plus ``expansion``: m = expansion x d) on
    the embeddings of ``cache`` (refused unless they are ``spec``'s), with ``train``:
    ``batch_size``, ``epochs``, ``lr``, ``seed``, ``memory_mb`` (held in memory when the
    embeddings fit, streamed block by block otherwise; the batches are the same),
    ``checkpoint_every``, ``normalise`` (each embedding scaled to unit norm first, as
    published).  Checkpoints go to ``{out_dir}/last.pt`` (a killed job resumes to
    the same weights); the SAE to :func:`save_sae`.  Returns the metadata."""
    from ...core.models.registry import resolve_device

    device = str(resolve_device(device))
    cfg = dict(sae)
    expansion = cfg.pop("expansion", 8)
    with RowCache(cache, "embeddings", {"model": spec}) as rc:
        arr = rc.array("embeddings")
        n, d = int(arr.shape[0]), int(arr.shape[1])
        block = rc.chunk_rows("embeddings")
        torch.manual_seed(train["seed"])  # relu_l1 takes torch's default init from it
        model = build_sae({**cfg, "d": d, "m": int(round(expansion * d))})
        in_memory = n * d * 4 <= train["memory_mb"] * 2 ** 20
        rows = (MemoryRows(rc.load("embeddings").astype("float32")) if in_memory
                else StreamedRows(rc, "embeddings", block))
        if train.get("normalise", True):
            rows = Normalised(rows)
        fingerprint = json.dumps({"sae": model.settings(), "train": dict(train),
                                  "cache": rc.provenance}, sort_keys=True, default=str)
        log.info("%s: training %s (%d -> %d) on %d embeddings of %s, %s", spec, model.kind, d,
                 model.m, n, cache, "in memory" if in_memory else f"streamed in blocks of {block}")
        loop = train_sae(model, rows, batch_size=train["batch_size"], epochs=train["epochs"],
                         lr=train["lr"], seed=train["seed"], block_rows=block, device=device,
                         desc=f"{model.kind} on {spec}",
                         checkpoint_path=Path(out_dir) / CHECKPOINT_FILE,
                         checkpoint_every=train["checkpoint_every"], fingerprint=fingerprint,
                         progress=progress, on_step=on_step)
        prov = rc.provenance
    meta = {"model": spec, "kind": "sae", "cache": {k: prov.get(k) for k in
                                                    ("dataset", "split", "n", "model")},
            "train": dict(train), "steps": loop.steps, "resumed_from": loop.resumed_from,
            "seconds": loop.seconds, "final_loss": loop.losses[-1],
            "library_versions": library_versions()}
    save_sae(model, meta, out_dir)
    return meta


def sae_inputs(cache: str, expected: Mapping[str, Any], meta: Mapping[str, Any]
               ) -> tuple[np.ndarray, dict[str, Any]]:
    """(the embeddings of ``cache`` as the SAE of ``meta`` saw them -- float32, unit norm when
    it trained on unit-norm rows -- [N, d], the cache's provenance); refused unless the cache
    matches ``expected``."""
    with RowCache(cache, "embeddings", expected) as rc:
        x = rc.load("embeddings").astype(np.float32)
        prov = rc.provenance
    if meta["train"].get("normalise", True):
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x, prov


def run_evaluate_sae(*, spec: str, load: Mapping[str, Any], sae_dir: str, task: str,
                     cache: str, roots: Mapping[str, str], out: str) -> dict[str, Any]:
    """The SAE of ``sae_dir`` on zero-shot task ``task`` from the embeddings ``cache`` of the
    task's split (refused unless ``spec``'s): its metrics (:func:`~.metrics.sae_metrics`) and
    the accuracy of CLIP (the embeddings, normalised as the SAE saw them) and of CLIP+SAE
    (their reconstructions renormalised), with the same classifier.  JSON to ``out``; the
    latents' firing rates are not written here."""
    import numpy as np

    from ...core.data.tasks import get_task
    from ...core.models.registry import load_model
    from ...core.text.zeroshot import argmax_accuracy, task_classifier
    from .metrics import reconstructed, sae_metrics

    sae, meta = load_sae(sae_dir, spec=spec)
    t = get_task(task)
    x, prov = sae_inputs(cache, {"model": spec, "dataset": t.dataset, "split": t.split}, meta)
    start = int(prov.get("start", 0))
    W, ds, _ = task_classifier(load_model(spec, **load), task, roots)
    labels = np.asarray(ds.labels)[start:start + len(x)]
    block = 4096
    metrics = sae_metrics(sae, (x[a:a + block] for a in range(0, len(x), block)))
    firing = metrics.pop("firing")
    result = {"model": spec, "task": task, "sae": meta["settings"], "n": len(x),
              "accuracy_clip": argmax_accuracy(x, W, labels),
              "accuracy_sae": argmax_accuracy(reconstructed(sae, x), W, labels),
              "chance": 1.0 / W.shape[1], **metrics,
              "firing_median": float(np.median(firing))}
    write_json_atomic(out, result)
    log.info("%s %s on %s: CLIP %.4f, CLIP+SAE %.4f, L0 %.1f, R2 %.3f, dead %.3f", spec,
             meta["settings"]["kind"], task, result["accuracy_clip"], result["accuracy_sae"],
             result["l0"], result["r2"], result["dead"])
    return result


#: the published table's columns, then ours
TABLE_COLUMNS = ["dataset", "model", "sae", "kind", "task", "accuracy_clip", "accuracy_sae",
                 "dict_size", "l0", "mse", "l1", "r2", "dead", "dense", "chance", "n"]


def run_sae_table(*, names: list[str], results: list[str], out_csv: str, out_png: str):
    """Every evaluation (:func:`run_evaluate_sae`) as one row of the published table's columns
    (dataset, model, accuracy, dict_size, L0, MSE, L1, R²) and ours (CLIP and CLIP+SAE
    accuracy side by side, dead and dense shares, chance, images); the figure: L0 against R²
    and against CLIP+SAE accuracy, one point per SAE and task.  ``names`` are the SAEs'
    config names, in the order of ``results``."""
    import pandas as pd

    from ...core.data.tasks import get_task
    from ...core.io import write_table
    from .figures import plot_metrics

    rows = []
    for name, path in zip(names, results):
        r = json.loads(Path(path).read_text())
        rows.append({"dataset": get_task(r["task"]).dataset, "model": r["model"], "sae": name,
                     "kind": r["sae"]["kind"], "task": r["task"],
                     "accuracy_clip": r["accuracy_clip"], "accuracy_sae": r["accuracy_sae"],
                     "dict_size": r["sae"]["m"], **{k: r[k] for k in TABLE_COLUMNS[8:]}})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    write_table(out_csv, table)
    plot_metrics(table, out_png)
    return table


def _latent_blocks(sae: SAE, x, block: int = 4096):
    """(first row, latents [b, m]) of rows x in blocks (eval mode, no gradients)."""
    sae.eval()
    with torch.no_grad():
        for a in range(0, len(x), block):
            yield a, sae.encode(torch.as_tensor(x[a:a + block], dtype=torch.float32)).numpy()


def feature_purity(rows, labels, live) -> tuple[np.ndarray, list[str]]:
    """Monosemanticity against known factors: for each feature's top images ``rows`` [m, k],
    the largest share of them that share one value of one factor (``labels``: factor -> [N]),
    and which (``factor=value``); NaN and "" for features not ``live`` [m]."""
    purity = np.full(len(rows), np.nan)
    which = [""] * len(rows)
    for j in np.flatnonzero(live):
        best, name = -1.0, ""
        for f, y in labels.items():
            vals, counts = np.unique(np.asarray(y)[rows[j]], return_counts=True)
            share = counts.max() / len(rows[j])
            if share > best:
                best, name = share, f"{f}={vals[counts.argmax()]}"
        purity[j], which[j] = best, name
    return purity, which


def most_frequent(rate: np.ndarray, live: np.ndarray, n: int) -> list[int]:
    """The ``n`` live features that fire most often, most frequent first (ties by index)."""
    order = np.argsort(-np.where(live, rate, -1), kind="stable")[:n]
    return [int(j) for j in order if live[j]]


def _write_collages(images: Mapping[int, np.ndarray], out_dir: str) -> None:
    """Each collage [H, W, 3] uint8 as ``{out_dir}/{feature}.png``, written atomically."""
    from PIL import Image

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for j, im in images.items():
        with atomic_path(Path(out_dir) / f"{j}.png") as tmp:
            Image.fromarray(np.asarray(im, dtype=np.uint8)).save(tmp, format="PNG")


def run_sae_features(*, spec: str, sae_dir: str, cache: str, roots: Mapping[str, str],
                     top: int, show: int, out_csv: str, out_json: str, out_collages: str,
                     out_histograms: str, describe: int = 0,
                     out_collage_dir: str | None = None) -> dict[str, Any]:
    """Per feature of the SAE, over the embeddings ``cache`` (normalised as the SAE saw them):
    its firing rate, its ``top`` images (rows of the cache's split) with their activations, a
    3 x 3 collage and a histogram of its non-zero activations, drawn for the ``show`` features
    that fire most often among those firing on at least ``top`` images, and for the ``describe``
    most frequent (study 002 part 2) one ``{j}.png`` collage each in ``out_collage_dir``.  On a
    toy dataset,
    each feature's purity (:func:`feature_purity`) beside the purity of ``top`` random images
    (the same statistic over 1,000 random draws), summarised in ``out_json``."""
    import numpy as np
    import pandas as pd

    from ...core.data.registry import open_dataset
    from ...core.io import write_table
    from ...core.toy.world import FACTORS
    from .features import activation_histograms, collage, top_activations
    from .figures import plot_collages, plot_histograms

    sae, meta = load_sae(sae_dir, spec=spec)
    x, prov = sae_inputs(cache, {"model": spec}, meta)
    fired = np.zeros(sae.m)

    def counted():  # the first pass also counts each feature's firing
        for a, z in _latent_blocks(sae, x):
            fired[:] += (z > 0).sum(0)
            yield a, z

    vals, rows = top_activations(counted(), top)
    zmax = float(vals[:, 0].max())  # the largest activation of any feature
    rate = fired / len(x)
    live = fired >= top
    data = open_dataset(prov["dataset"], prov["split"], **roots)
    start = int(prov.get("start", 0))
    labels = getattr(data, "factor_labels", None)
    factors = {f: np.asarray(labels[f])[start:start + len(x)] for f in FACTORS} if labels else None
    table = pd.DataFrame({"feature": np.arange(sae.m), "firing_rate": rate, "live": live,
                          "top_rows": [";".join(str(int(r) + start) for r in rr if r >= 0)
                                       for rr in rows],
                          "top_values": [";".join(f"{v:.4g}" for v in vv if np.isfinite(v))
                                         for vv in vals]})
    summary: dict[str, Any] = {"model": spec, "sae": meta["settings"], "images": len(x),
                               "top": top, "live": int(live.sum()), "dead": int((fired == 0).sum())}
    if factors is not None:
        purity, which = feature_purity(rows, factors, live)
        named = []
        for w in which:  # factor=index -> factor=canonical name
            f, _, v = w.partition("=")
            named.append(f"{f}={FACTORS[f][int(v)]}" if f else "")
        table["purity"], table["purity_of"] = purity, named
        rng = np.random.default_rng(0)
        draws = rng.integers(0, len(x), size=(1000, top))
        chance, _ = feature_purity(draws, factors, np.ones(len(draws), bool))
        p = purity[live]
        summary.update({"purity_median": float(np.median(p)) if len(p) else None,
                        "purity_quartiles": [float(q) for q in np.percentile(p, [25, 75])]
                        if len(p) else None,
                        "share_pure": float((p >= 0.9).mean()) if len(p) else None,
                        "chance_median": float(np.median(chance)),
                        "chance_share_pure": float((chance >= 0.9).mean())})
    write_table(out_csv, table)
    write_json_atomic(out_json, summary)
    shown = most_frequent(rate, live, show)
    described = most_frequent(rate, live, describe) if out_collage_dir else []
    images = {j: collage([np.asarray(data.image(int(r) + start).convert("RGB").resize((64, 64)))
                          for r in rows[j][:9]]) for j in dict.fromkeys(shown + described)}
    if out_collage_dir:
        _write_collages({j: images[j] for j in described}, out_collage_dir)
    titles = {j: f"feature {j}: fires on {100 * rate[j]:.1f} %"
                 + (f"\n{table['purity_of'][j]} ({table['purity'][j]:.2f})" if factors else "")
              for j in shown}
    name = f"{spec} {meta['settings']['kind']} on {prov['dataset']}/{prov['split']}"
    plot_collages({j: images[j] for j in shown}, titles, out_collages,
                  f"{name}: top 9 images of the {len(shown)} features firing most often")
    edges = np.linspace(0.0, max(zmax, 1e-6), 31)
    counts = activation_histograms((z for _, z in _latent_blocks(sae, x)), edges)
    plot_histograms(counts[shown], edges, titles, shown, out_histograms,
                    f"{name}: non-zero activations of the same features")
    log.info("%s: %d live features of %d, %d dead; purity %s", name, int(live.sum()), sae.m,
             summary["dead"], summary.get("purity_median"))
    return summary
