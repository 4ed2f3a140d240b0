"""Study 004 jobs (``rules/purity.smk``): the purity of a model's projection layers, zero-shot
accuracy and silhouette with its image embedding pruned by purity, and the tables and figures
that compare models."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...core.io import write_json_atomic, write_npz, write_table
from .metrics import neuron_scores, pruned_scores, purity_metrics

log = logging.getLogger("cliplens")

PROJECTIONS = ("image", "text")


def projection_rows(model) -> dict[str, np.ndarray]:
    """The output neurons of the image and text projections of ``model`` (a ClipModel), each
    [D_out, D_in] float64 (row i is the weight vector of embedding dimension i).  A model
    without a separate image projection (SigLIP pools with an attention head) is a
    ValueError naming it."""
    from ...core.models.towers import text_projection, tower_of

    try:
        w, _ = tower_of(model).image_projection()
        t = text_projection(model)
    except NotImplementedError as e:
        raise ValueError(f"{model.spec} has no separate projection layer ({e}); study 004 "
                         f"measures CLIP-style image and text projections") from None
    if w is None:
        raise ValueError(f"{model.spec} has no image projection after its pooled token")
    return {"image": w.detach().double().cpu().numpy().T,
            "text": t.detach().double().cpu().numpy().T}


def run_purity_weights(*, spec: str, load: Mapping[str, Any], include_diagonal: bool,
                       out_json: str, out_npz: str) -> dict[str, Any]:
    """:func:`~.metrics.purity_metrics` of both projections of ``spec`` (JSON) and each
    embedding dimension's summed |cos| to the others in each (``image``, ``text``, npz)."""
    from ...core.models.registry import load_model

    rows = projection_rows(load_model(spec, **load))
    result = {"model": spec, **{p: purity_metrics(r, include_diagonal) for p, r in rows.items()}}
    write_npz(out_npz, {p: neuron_scores(r) for p, r in rows.items()})
    write_json_atomic(out_json, result)
    log.info("%s: mean |cos| image %.4f, text %.4f", spec, result["image"]["mean_abs"],
             result["text"]["mean_abs"])
    return result


def run_purity_eval(*, spec: str, load: Mapping[str, Any], task: str, cache: str,
                    roots: Mapping[str, str], scores: str, keep: Sequence[int], seeds: int,
                    silhouette_sample: int, out_csv: str):
    """Zero-shot accuracy and cosine silhouette of task ``task``'s image embeddings (``cache``)
    whole (mode ``all``) and with all but ``k`` dimensions zeroed, for each k of ``keep``: the
    k purest, the k least pure (by the summed |cos| of ``scores``, of the image and of the text
    projection) and k at random (``seeds`` draws)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from ...core.caches.rows import RowCache
    from ...core.data.tasks import get_task
    from ...core.models.registry import load_model
    from ...core.text.zeroshot import task_classifier
    from .metrics import keep_mask

    t = get_task(task)
    W, ds, _ = task_classifier(load_model(spec, **load), task, roots)
    with RowCache(cache, "embeddings", {"model": spec, "dataset": t.dataset,
                                        "split": t.split}) as rc:
        x = rc.load("embeddings").astype(np.float32)
        start = int(rc.provenance.get("start", 0))
    labels = np.asarray(ds.labels)[start:start + len(x)]
    sc = np.load(scores)
    d = x.shape[1]
    runs = [("all", "all", d, 0)]
    for by in PROJECTIONS:
        for k in keep:
            runs += [(by, "pure", k, 0), (by, "impure", k, 0)]
            runs += [(by, "random", k, s) for s in range(seeds)]
    rows = []
    for by, mode, k, seed in tqdm(runs, desc=f"prune {task}", unit="run"):
        mask = np.ones(d, bool) if mode == "all" else keep_mask(sc[by], k, mode, seed)
        rows.append({"model": spec, "task": task, "by": by, "mode": mode, "k": k, "seed": seed,
                     **pruned_scores(x, W, labels, mask, silhouette_sample, seed)})
    table = pd.DataFrame(rows)
    write_table(out_csv, table)
    return table


def run_purity_table(*, models: Sequence[str], weights: Sequence[str], evals: Sequence[str],
                     pairs: Sequence[Sequence[str]], out_compare: str, out_pruning: str,
                     out_compare_png: str, out_pruning_png: str) -> None:
    """The model comparison (per model and task: accuracy, silhouette, both projections'
    mean |cos|; per pair the second model minus the first) and the pruning sweep (every
    eval row, the pure-minus-impure gap per k), with their figures."""
    import pandas as pd

    from .figures import plot_compare, plot_pruning

    purity = {p["model"]: p for p in (json.loads(Path(w).read_text()) for w in weights)}
    sweep = pd.concat([pd.read_csv(e) for e in evals], ignore_index=True)
    whole = sweep[sweep["mode"] == "all"]
    rows = []
    for _, r in whole.iterrows():
        p = purity[r["model"]]
        rows.append({"model": r["model"], "task": r["task"], "accuracy": r["accuracy"],
                     "silhouette": r["silhouette"], "image_mean_abs": p["image"]["mean_abs"],
                     "text_mean_abs": p["text"]["mean_abs"]})
    compare = pd.DataFrame(rows)
    for a, b in pairs:
        for task in compare["task"].unique():
            ra = compare[(compare.model == a) & (compare.task == task)]
            rb = compare[(compare.model == b) & (compare.task == task)]
            if len(ra) and len(rb):
                diff = {c: float(rb[c].iloc[0] - ra[c].iloc[0]) for c in
                        ("accuracy", "silhouette", "image_mean_abs", "text_mean_abs")}
                rows.append({"model": f"{b} - {a}", "task": task, **diff})
    compare = pd.DataFrame(rows)
    write_table(out_compare, compare)
    write_table(out_pruning, sweep)
    plot_compare(compare[compare["model"].isin(models)], out_compare_png)
    plot_pruning(sweep, out_pruning_png)
