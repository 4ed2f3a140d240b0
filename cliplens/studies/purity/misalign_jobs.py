"""Study 004's misalignment jobs: features that enter the projections (computed once per
model), one fine-tune per misalignment fraction Cs and seed, and the table and figure of purity
and accuracy against Cs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...core.io import write_json_atomic, write_npz, write_table

log = logging.getLogger("cliplens")


def _pre_projection_images(model, dataset, n: int, batch_size: int) -> np.ndarray:
    import torch

    from ...core.caches.rows import batch_bounds, prefetched_batches

    out = []
    with torch.inference_mode():
        for _, pixels in prefetched_batches(dataset, model, batch_bounds(0, n, batch_size)):
            out.append(model.encode_image(pixels.to(model.device)).float().cpu().numpy())
    return np.concatenate(out)


def split_captions(ds, split: str, n: int, which: str) -> list[str]:
    """One caption per image for the first ``n`` images of ``ds`` (split ``split``).

    * a toy split (a :class:`~cliplens.core.data.toy.ToyDataset`): its ``captions_{which}``,
      ``which`` = ``rich`` or ``poor``;
    * a real captioned dataset (``ds.captions``: coco2017, cc3m): each image's first caption
      (``captions[i]`` a list of captions, or one caption as a str).  Real datasets have one
      kind of caption, read as ``rich`` (the default): asking for ``poor`` raises ValueError
      rather than silently reading the only captions there are;
    * anything else: ValueError (purity.misalign needs a captioned dataset).
    """
    from ...core.data.readers import CAPTIONED
    from ...core.data.toy import ToyDataset, read_split

    if which not in ("rich", "poor"):
        raise ValueError(f"captions must be rich or poor, not {which!r}")
    if isinstance(ds, ToyDataset):
        return [str(c) for c in read_split(ds.path, split, keys=())[f"captions_{which}"][:n]]
    captions = getattr(ds, "captions", None)
    if captions is None:
        raise ValueError(f"{ds.name}/{split} has no captions: purity.misalign needs a captioned "
                         f"dataset (a toy one, {', '.join(CAPTIONED)})")
    if which != "rich":
        raise ValueError(f"{ds.name} has one kind of caption, not toy rich/poor captions: set "
                         f"purity.misalign.captions to rich (or use a toy dataset)")
    out = []
    for i, caps in enumerate(captions[:n]):
        cap = caps if isinstance(caps, str) else (caps[0] if len(caps) else "")
        if not str(cap).strip():
            raise ValueError(f"{ds.name}/{split}: image {i} has no caption")
        out.append(str(cap))
    return out


def run_purity_features(*, spec: str, load: Mapping[str, Any], dataset: str, split: str,
                        captions: str, images: int, tasks: Sequence[str],
                        roots: Mapping[str, str], out_npz: str, batch_size: int = 256) -> None:
    """What enters the image and text projections of ``spec``: for the first ``images`` of
    ``dataset``/``split`` (a captioned dataset: a toy split, coco2017 or cc3m; see
    :func:`split_captions`) the image features and their captions (``captions``: ``rich`` or
    ``poor`` of a toy split; a real dataset's first caption per image) as an index into the
    distinct captions and those captions' features; for each task's split the image features
    and labels; the projections and the model's logit scale.  All in one npz."""
    import torch

    from ...core.data.registry import open_dataset
    from ...core.data.tasks import get_task
    from ...core.models.registry import load_model
    from ...core.models.projections import projections_removed
    from ...core.models.towers import text_projection, tower_of

    ds = open_dataset(dataset, split, **roots)
    n = min(images, len(ds))
    caps = split_captions(ds, split, n, captions)  # before the model: fail fast
    model = load_model(spec, **load)
    texts, index = np.unique(np.asarray(caps, dtype=object), return_inverse=True)
    arrays: dict[str, Any] = {"model": np.array(spec), "texts": np.array(texts, dtype=str),
                              "caption_index": index.astype(np.int64)}
    with projections_removed(model):
        arrays["image"] = _pre_projection_images(model, ds, n, batch_size)
        with torch.inference_mode():
            arrays["text"] = np.concatenate([
                model.encode_text(list(texts[a:a + batch_size])).float().cpu().numpy()
                for a in range(0, len(texts), batch_size)])
        for task in tasks:
            t = get_task(task)
            key = f"{t.dataset}/{t.split}"
            if f"x:{key}" not in arrays:
                tds = open_dataset(t.dataset, t.split, **roots)
                arrays[f"x:{key}"] = _pre_projection_images(model, tds, len(tds), batch_size)
    w, _ = tower_of(model).image_projection()
    arrays["w_image"] = w.detach().float().cpu().numpy()
    arrays["w_text"] = text_projection(model).detach().float().cpu().numpy()
    arrays["scale"] = np.array(model.logit_scale())
    write_npz(out_npz, arrays)
    log.info("%s: %d images, %d distinct captions, %d task splits", spec, n, len(texts),
             sum(k.startswith("x:") for k in arrays))


def run_purity_finetune(*, spec: str, load: Mapping[str, Any], features: str, fraction: float,
                        seed: int, init: str, train: Mapping[str, Any], tasks: Sequence[str],
                        neighbours: Mapping[str, Any] | None = None,
                        roots: Mapping[str, str], include_diagonal: bool, out_json: str,
                        progress: bool = True) -> dict[str, Any]:
    """Misalign a fraction ``fraction`` of the captions of ``features`` (seed ``seed``;
    partners found by ``neighbours``: search, probes),
    fine-tune both projections from ``init`` (``train``: steps, batch_size, lr,
    checkpoint_every; checkpoints beside ``out_json``), then the purity of both projections
    and each task's zero-shot accuracy with them (the image embedding is the cached feature
    times the new image projection; the classifier is built by the model with the new text
    projection in place).  JSON to ``out_json``."""
    import torch

    from ...core.data.tasks import get_task
    from ...core.io import sha256_file
    from ...core.models.registry import load_model
    from ...core.models.towers import text_projection
    from ...core.text.zeroshot import argmax_accuracy, task_classifier
    from ...core.train import fingerprint
    from .metrics import purity_metrics
    from .misalign import finetune_projections, misalign

    neighbours = dict(neighbours or {"search": "exact"})
    f = np.load(features)
    if str(f["model"]) != spec:
        raise ValueError(f"{features} holds the features of {str(f['model'])!r}, not {spec!r}")
    index, changed, cos = misalign(f["caption_index"], list(f["texts"]), fraction, seed,
                                   search=str(neighbours["search"]),
                                   probes=int(neighbours.get("probes", 16)),
                                   progress=progress)
    out = Path(out_json)
    ckpt = out.with_suffix(".ckpt") / "last.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    fp = fingerprint({"model": spec, "fraction": fraction, "seed": seed, "init": init,
                      "train": dict(train), "neighbours": dict(neighbours),
                      "features": sha256_file(features)})
    p_i, p_t, loop = finetune_projections(
        f["image"], f["text"], index, f["w_image"], f["w_text"], float(f["scale"]),
        steps=int(train["steps"]), batch_size=int(train["batch_size"]), lr=float(train["lr"]),
        seed=seed, init=init, checkpoint_path=ckpt,
        checkpoint_every=int(train["checkpoint_every"]), fingerprint=fp, progress=progress)
    model = load_model(spec, **load)
    with torch.no_grad():
        text_projection(model).copy_(torch.as_tensor(p_t))
    accuracy = {}
    for task in tasks:
        t = get_task(task)
        W, ds, _ = task_classifier(model, task, roots)
        accuracy[task] = argmax_accuracy(f[f"x:{t.dataset}/{t.split}"] @ p_i, W,
                                         np.asarray(ds.labels))
    result = {"model": spec, "fraction": fraction, "seed": seed, "init": init,
              "neighbours": dict(neighbours), "captions_changed": int(len(changed)),
              "partner_cosine": None if np.isnan(cos) else cos,
              "images": int(len(index)),
              "steps": loop.step, "final_loss": float(np.mean(loop.losses[-20:])),
              "image": purity_metrics(p_i.T, include_diagonal),
              "text": purity_metrics(p_t.T, include_diagonal), "accuracy": accuracy}
    write_json_atomic(out, result)
    log.info("%s Cs %.2f seed %d: mean |cos| image %.4f, text %.4f; accuracy %s", spec,
             fraction, seed, result["image"]["mean_abs"], result["text"]["mean_abs"], accuracy)
    return result


def run_purity_misalign_table(*, results: Sequence[str], out_csv: str, out_png: str):
    """One row per fine-tune (model, Cs, seed): both projections' mean |cos| and each task's
    accuracy; the figure: their means over seeds against Cs with 95 % t intervals."""
    import pandas as pd

    from .figures import plot_misalignment

    rows = []
    for p in results:
        r = json.loads(Path(p).read_text())
        rows.append({"model": r["model"], "fraction": r["fraction"], "seed": r["seed"],
                     "init": r["init"], "partner_cosine": r.get("partner_cosine"),
                     "image_mean_abs": r["image"]["mean_abs"],
                     "text_mean_abs": r["text"]["mean_abs"],
                     **{f"accuracy:{t}": a for t, a in r["accuracy"].items()}})
    table = pd.DataFrame(rows)
    write_table(out_csv, table)
    plot_misalignment(table, out_png)
    return table
