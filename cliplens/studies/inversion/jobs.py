"""Study 000 jobs: one ``run_*`` per rule of ``rules/inversion.smk``, called by
``workflow_scripts/inversion/<rule>.py`` with the rule's params, inputs and outputs.  Each reads
its inputs (refusing caches of another model or layer), computes with this package and writes its
outputs atomically; each is usable from a notebook.

``load``: :func:`~cliplens.core.models.registry.load_model`'s keyword arguments; ``roots``: the
``results`` and ``resources`` folders datasets are opened from.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from ...core.caches.rows import shard_bounds
from ...core.caches.tokens import extract_tokens, open_tokens
from ...core.data.views import open_view
from ...core.io import (atomic_path, check_provenance, create_checked, library_versions,
                        mark_complete, open_h5, reading, set_provenance, write_npz, write_table)
from ...core.models.registry import load_model, resolve_device
from ...core.settings import ReconstructorSettings, ReconstructorTrain
from .colour import evaluate_colour_operators, fit_colour_operators
from .reconstructor import (build_reconstructor, load_reconstructor, reconstruct,
                            save_reconstructor, to_uint8)
from .similarity import similarity_rows, summarise_similarity
from .training import PairSource, target_transform, train_reconstructor

log = logging.getLogger("cliplens")

#: operator kinds whose eigenvalues the R<->B swap figure shows
EIGEN_KINDS = ("procrustes", "symmetric", "linear", "affine")


def _model(spec: str, load: Mapping[str, Any]):
    model = load_model(spec, **load)
    model.model.eval()
    return model


def _expected_tokens(model, dataset: str, split: str, layer: int, image_key: str = "images"
                     ) -> dict[str, Any]:
    prov = model.provenance()
    out = {"kind": "tokens", "model": model.spec, "dataset": dataset, "split": split,
           "layer": int(layer), "image_key": image_key}
    if "weights_sha256" in prov:
        out["weights_sha256"] = prov["weights_sha256"]
    return out


@torch.no_grad()
def heldout_tokens(model, dataset, n: int, layer: int, batch_size: int = 64,
                   keep_images: bool = True) -> tuple[torch.Tensor, list[Image.Image]]:
    """Tokens [n, P, D] (computed now, not cached) of the first ``n`` images, read batch by
    batch, and those PIL images (an empty list unless ``keep_images``)."""
    n = min(int(n), len(dataset))
    toks, kept = [], []
    for a in range(0, n, batch_size):
        images = dataset.images(a, min(a + batch_size, n))
        toks.append(model.tower.hidden_tokens(model.preprocess(images), layer).cpu())
        if keep_images:
            kept += images
    return (torch.cat(toks) if toks else torch.empty(0)), kept


# ---------------------------------------------------------------------------------------------
# token caches


def run_token_shard(*, spec: str, load: Mapping[str, Any], dataset: str, split: str, key: str,
                    layer: int, rows: str, shard: int, n_shards: int, batch_size: int,
                    dtype: str, blue_factor: float, roots: Mapping[str, str], out: str
                    ) -> dict[str, Any]:
    """Patch tokens of hidden state ``layer`` for shard ``shard`` of ``n_shards`` of a dataset
    view (image ``key``, first ``rows`` images) into a token cache."""
    data = open_view(dataset, split, **roots, image_key=key, rows=rows, blue_factor=blue_factor)
    start, stop = shard_bounds(len(data), n_shards, shard, align=batch_size)
    log.info("%s layer %d on %s/%s[%s] (%s): shard %d of %d = rows [%d, %d) of %d", spec, layer,
             dataset, split, rows, key, shard, n_shards, start, stop, len(data))
    return extract_tokens(_model(spec, load), data, out, layer=layer, start=start, stop=stop,
                          batch_size=batch_size, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# reconstructors


def run_train(
    *, spec: str, load: Mapping[str, Any], tokens: str | None, dataset: str, train_split: str,
    eval_split: str, layer: int, reconstructor: Mapping[str, Any], train: Mapping[str, Any],
    roots: Mapping[str, str], out_dir: str | os.PathLike, train_images: int | None = None,
    memory_limit_gb: float = 4.0, progress: bool = True,
) -> dict[str, Any]:
    """Train the reconstructor of extractor ``spec`` (``inversion.reconstructor`` and
    ``inversion.train`` settings) and save it to ``out_dir`` (checkpoints and sample grids in
    ``out_dir/checkpoints``; a killed job resumes there).  Tokens come from the token cache
    ``tokens`` (of ``dataset``/``train_split``; read into memory when smaller than
    ``memory_limit_gb``, else per batch) or, with ``tokens=None``, are computed online by the
    extractor.  Returns the metadata written beside the weights."""
    arch = ReconstructorSettings.from_dict(reconstructor)
    cfg = ReconstructorTrain.from_dict(train)
    model = _model(spec, load)
    data = open_view(dataset, train_split, **roots, rows=train_images)
    targets = target_transform(model)
    if tokens:
        cache = open_tokens(tokens, _expected_tokens(model, dataset, train_split, layer))
        n, P, D = cache.shape
        grid, tok_prov = cache.grid, cache.provenance
        if len(data) != n:
            raise ValueError(f"{tokens} has {n} rows but {dataset}/{train_split} has "
                             f"{len(data)} images: rebuild the token cache")
        in_memory = n * P * D * 2 <= memory_limit_gb * 2**30
        source = PairSource(cache.load() if in_memory else str(tokens), data, targets)
        cache.close()
        mode = "cached, in memory" if in_memory else "cached, read per batch"
    else:
        def encode(px: torch.Tensor) -> torch.Tensor:
            return model.tower.hidden_tokens(px, layer)

        source = PairSource(None, data, targets, encode=encode)
        grid, mode = model.tower.grid(), "online"
        with torch.no_grad():
            D = int(encode(targets.pixels_and_targets([data.image(0)])[0]).shape[-1])
        tok_prov = {**model.provenance(), **data.describe(), "layer": int(layer), "grid": grid}
    evalset = open_view(dataset, eval_split, **roots)
    s_tok, s_img = heldout_tokens(model, evalset, cfg.sample_images, layer)
    net = build_reconstructor(D, grid, model.image_size, arch, seed=cfg.seed)
    log.info("%s: reconstructor %s parameters, %d training images (tokens %s), %d steps", spec,
             f"{sum(p.numel() for p in net.parameters()):,}", len(source), mode, cfg.steps)
    rec = train_reconstructor(
        net, source, cfg, device=resolve_device(load.get("device", "cpu")),
        checkpoint_dir=Path(out_dir) / "checkpoints", sample=(s_tok, targets(s_img)),
        fingerprint_data={k: tok_prov.get(k) for k in
                          ("model", "weights_sha256", "revision", "dataset", "split", "n",
                           "layer", "image_key", "grid")},
        progress=progress)
    meta = {"extractor": spec, "family": model.family, "image_size": int(model.image_size),
            "grid": list(grid), "layer": int(layer), "dataset": dataset,
            "train_split": train_split, "train_pairs": len(source), "train_tokens": mode,
            "train": cfg.to_dict(), "parameters": int(sum(p.numel() for p in net.parameters())),
            "threads": torch.get_num_threads(), **rec}
    save_reconstructor(net.cpu(), meta, out_dir)
    log.info("%s: %d steps in %.1f s (resumed from %s), final loss %.4f, held-out loss %s",
             spec, meta["steps"], meta["seconds"], meta["resumed_from"], meta["final_loss"],
             meta["val_history"][-1][1] if meta["val_history"] else "n/a")
    return meta


def run_heldout(
    *, spec: str, load: Mapping[str, Any], recon_dir: str | os.PathLike, dataset: str,
    split: str, n_images: int, layer: int, group: str, roots: Mapping[str, str],
    out: str | os.PathLike, batch_size: int = 64,
) -> dict[str, Any]:
    """Reconstruct the first ``n_images`` of ``dataset``/``split`` from extractor ``spec``'s
    tokens (computed now) with its reconstructor; write uint8 reconstructions ``/recon``
    [n, S, S, 3] and ``/index`` to an HDF5 file with provenance (model, group, resolution, ...)."""
    import h5py

    model = _model(spec, load)
    net, meta = load_reconstructor(recon_dir, device=model.device)
    if int(meta["layer"]) != int(layer):
        raise ValueError(f"{recon_dir} was trained on layer {meta['layer']}, asked for {layer}")
    data = open_view(dataset, split, **roots)
    tok, _ = heldout_tokens(model, data, n_images, layer, batch_size, keep_images=False)
    rec = to_uint8(reconstruct(net, tok, batch_size))
    prov = {"kind": "reconstructions", "model": spec, "family": model.family, "group": group,
            "resolution": int(model.image_size), "grid": meta["grid"], "layer": int(layer),
            "dataset": dataset, "split": split, "n": int(len(rec)),
            "reconstructor": meta["fingerprint"], "library_versions": library_versions()}
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        create_checked(h5, "recon", rec, compression="gzip", compression_opts=1)
        create_checked(h5, "index", np.arange(len(rec), dtype=np.int64))
        set_provenance(h5, prov)
        mark_complete(h5)
    log.info("%s (%s, %d px): reconstructed %d images of %s/%s", spec, group,
             prov["resolution"], prov["n"], dataset, split)
    return prov


def read_heldout(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """(uint8 reconstructions [n, S, S, 3], provenance) of a file from :func:`run_heldout`."""
    prov = check_provenance(path, {"kind": "reconstructions"})
    with open_h5(path) as h5, reading(path, "recon"):
        return h5["recon"][()], prov


# ---------------------------------------------------------------------------------------------
# similarity


def run_scoring(*, scorer: str, load: Mapping[str, Any], heldout: Sequence[str | os.PathLike],
                variants: Sequence[str], roots: Mapping[str, str], batch_size: int = 64,
                out: str | None = None):
    """Per-image similarity rows (:func:`~.similarity.similarity_rows`) of every held-out
    reconstruction file under scorer ``scorer`` (all files must cover the same images of one
    dataset split); the table, also written to ``out`` when given."""
    import pandas as pd

    recs, provs = {}, []
    for path in heldout:
        arr, prov = read_heldout(path)
        recs[prov["model"]] = [Image.fromarray(a) for a in arr]
        provs.append(prov)
    keys = {(p["dataset"], p["split"], p["n"]) for p in provs}
    if len(keys) != 1:
        raise ValueError(f"held-out reconstructions cover different images: {sorted(keys)}")
    dataset, split, n = keys.pop()
    originals = open_view(dataset, split, **roots).images(0, n)
    with torch.inference_mode():
        rows = similarity_rows(_model(scorer, load), originals, recs, variants=variants,
                               batch_size=batch_size)
    info = {p["model"]: p for p in provs}
    df = pd.DataFrame(rows)
    df.insert(3, "group", [info[s]["group"] for s in df.extractor])
    df.insert(4, "resolution", [int(info[s]["resolution"]) for s in df.extractor])
    if out is not None:
        write_table(out, df)
        log.info("%s: %d rows\n%s", scorer, len(df),
                 df.groupby(["variant", "extractor"])["cosine"].mean().to_string())
    return df


def run_similarity_table(*, scores: Sequence[str], extractors: Sequence[str], summary: str,
                         per_image: str, diff: str):
    """Similarity tables from the scorers' per-image files: per image; mean with 95 % t-CI per
    (scorer, variant, extractor); the paired second-group minus first-group differences at equal
    resolution (:func:`~.similarity.summarise_similarity`).  Returns (summary, differences)."""
    import pandas as pd

    table = pd.concat([pd.read_csv(f) for f in scores], ignore_index=True)
    order = {s: i for i, s in enumerate(extractors)}
    table = table.sort_values(
        ["scorer", "variant", "extractor", "image"],
        key=lambda c: c.map(order) if c.name == "extractor" else c, kind="stable")
    cols = table[["extractor", "group", "resolution"]].drop_duplicates()
    info = {s: {"group": g, "resolution": r} for s, g, r in cols.itertuples(index=False)}
    info = {s: info[s] for s in extractors if s in info}
    summ, differences = summarise_similarity(table.to_dict("records"), info)
    for df, path in ((summ, summary), (table, per_image), (differences, diff)):
        write_table(path, df, float_format="%.6g")
    log.info("summary:\n%s\npaired differences:\n%s", summ.to_string(), differences.to_string())
    return summ, differences


def run_v1_vs_v2_figure(*, table: str, layer: int, dataset: str, split: str, out: str) -> None:
    """``v1_vs_v2.png``: similarity against input resolution, SigLIP vs SigLIP2, one panel per
    scorer, from the similarity summary ``table`` (the data it draws)."""
    import pandas as pd

    from .figures import plot_v1_vs_v2

    summary = pd.read_csv(table)
    n = ", ".join(str(x) for x in sorted(summary["n"].unique()))
    plot_v1_vs_v2(summary, out, title=(
        f"Images reconstructed from patch tokens (hidden state {layer}): SigLIP vs SigLIP2\n"
        f"cosine similarity of scorer embeddings, original vs reconstruction; n = {n} "
        f"held-out images of {dataset}/{split}; error bars: 95 % t-CI"))


def run_reconstructions_figure(*, heldout: Sequence[str], n_images: int,
                               roots: Mapping[str, str], out: str, arrays: str) -> dict:
    """``reconstructions.png``: the first ``n_images`` held-out images beside their
    reconstruction from every extractor; the images drawn go to ``arrays`` (npz: ``original``
    and one ``recon/<extractor>`` per column, uint8 [k, S, S, 3])."""
    from .figures import plot_reconstructions

    cols, prov = [], None
    for path in heldout:
        rec, prov = read_heldout(path)
        label = f"{prov['group']} {prov['resolution']}px\n{prov['model'].split('/')[-1]}"
        cols.append((label, prov["model"], rec[:n_images]))
    data = open_view(prov["dataset"], prov["split"], **roots)
    originals = [np.asarray(im) for im in data.images(0, min(n_images, len(cols[0][2])))]
    drawn = {"original": np.stack(originals), **{f"recon/{m}": r for _, m, r in cols}}
    write_npz(arrays, drawn, compressed=True)
    plot_reconstructions(originals, [(label, r) for label, _, r in cols], out, title=(
        f"Held-out images of {prov['dataset']}/{prov['split']} and their reconstructions from "
        f"the patch tokens (hidden state {prov['layer']}) of each extractor"))
    return drawn


# ---------------------------------------------------------------------------------------------
# colour operators


def run_operators(
    *, spec: str, load: Mapping[str, Any], recon_dir: str | os.PathLike,
    train_caches: Mapping[str, str], test_caches: Mapping[str, str], dataset: str,
    test_split: str, tasks: Mapping[str, Sequence[str]], ridge: float, n_examples: int,
    roots: Mapping[str, str], table: str | None = None, arrays: str | None = None,
    test_images: int | None = None, blue_factor: float = 0.0, layer: int = -2,
):
    """Fit and evaluate the colour operators (:func:`~.colour.fit_colour_operators`,
    :func:`~.colour.evaluate_colour_operators`) in the token space of ``spec``; returns (table
    rows, arrays), also written to ``table`` (CSV) and ``arrays`` (npz) when given.
    ``train_caches`` / ``test_caches``: view key -> token cache path."""
    import pandas as pd

    model = _model(spec, load)
    net, meta = load_reconstructor(recon_dir)
    if int(meta["layer"]) != int(layer):
        raise ValueError(f"{recon_dir} was trained on layer {meta['layer']}, operators use {layer}")
    train = {k: open_tokens(p, {"kind": "tokens", "model": spec, "image_key": k, "layer": layer})
             for k, p in train_caches.items()}
    test = {k: open_tokens(p, {"kind": "tokens", "model": spec, "image_key": k, "layer": layer})
            for k, p in test_caches.items()}
    fitted = fit_colour_operators(train, tasks, ridge=ridge)
    targets = target_transform(model)
    images = {}
    for key in test:
        view = open_view(dataset, test_split, **roots, image_key=key, rows=test_images,
                         blue_factor=blue_factor)
        images[key] = torch.cat([targets(view.images(a, min(a + 256, len(view))))
                                 for a in range(0, len(view), 256)])
    rows, out = evaluate_colour_operators(fitted, test, images, net, n_examples=n_examples)
    for tc in [*train.values(), *test.values()]:
        tc.close()
    for r in rows:
        r["model"] = spec
    frame = pd.DataFrame(rows)
    if table is not None:
        write_table(table, frame, float_format="%.6g")
    if arrays is not None:
        write_npz(arrays, out, compressed=True)
    cols = ["task", "kind", "r2", "r2_identity", "mse_vs_transformed", "mse_vs_original"]
    log.info("operators of %s:\n%s", spec, frame[cols].to_string())
    return rows, out


def run_operator_figures(*, table: str, arrays: str, tasks: Sequence[str], model: str,
                         outs: Sequence[str]) -> None:
    """One figure per operator task (``rb_swap.png`` ...) from the operators' table and arrays
    (the data they draw); the R<->B swap figure adds its operators' eigenvalues."""
    import pandas as pd

    from .figures import plot_operator_figure

    rows = pd.read_csv(table).to_dict("records")
    with np.load(arrays) as z:
        data = {k: z[k] for k in z.files}
    for task, out in zip(tasks, outs):
        eig = [k for k in EIGEN_KINDS if f"{task}/{k}/eig" in data] if task == "rb_swap" else []
        plot_operator_figure(task, rows, data, out, model=model, eigen_kinds=eig)
