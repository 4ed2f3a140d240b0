"""Study 003 jobs: one ``run_*`` per rule of ``rules/neurons.smk`` up to the effects (the
rules of what the units respond to are in :mod:`.responses`), called by
``workflow_scripts/neurons/<rule>.py``.  Each checks its inputs' provenance (a store built for
another model is refused), computes with :mod:`.store`, :mod:`.components` and :mod:`.sparse`,
and writes its outputs atomically.

``load``: :func:`~cliplens.core.models.registry.load_model`'s keyword arguments; ``roots``: the
``results`` and ``resources`` folders datasets are opened from; ``cfg``: the rule's slice of the
``neurons`` settings, as plain values.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ...core.caches.rows import RowCache, shard_bounds
from ...core.data.registry import open_dataset
from ...core.io import (atomic_path, check_provenance, create_checked, library_versions, mark_complete, open_h5, reading, set_provenance,
                        write_json_atomic, write_table, write_text_atomic)
from ...core.models.registry import load_model
from ...core.settings import NeuronComponents, NeuronEffects, NeuronSparse, NeuronTable
from ...core.text.textsets import read_texts
from .analysis import ABLATE, KEEP, REPLACE, changed_pairs, changed_units, unit_mask
from .components import Components, components, pair_components
from .figures import plot_effects
from .pairs import pair_bias, pair_directions
from .sparse import sparse_decompose, text_dictionary, top_texts
from .store import KIND, VARIANTS, extract_store, store_blocks

log = logging.getLogger("cliplens")


def store_images(data, images: int | None):
    """The images a store holds: ``images`` of ``data`` spread evenly over it
    (:class:`~cliplens.core.data.views.SpreadRows`), or all of it when None or when it has
    fewer (said in the log; ``n`` and ``of_n`` record it)."""
    from ...core.data.views import SpreadRows

    if images is None:
        return data
    if images > len(data):
        log.warning("%s/%s has %d images, fewer than the %d asked for: all %d are used", data.name,
                    data.split, len(data), images, len(data))
        return data
    return SpreadRows(data, images)


def store_view(prov: Mapping[str, Any], n: int, roots: Mapping[str, str], data=None):
    """The dataset view whose row i is row i of a store of ``n`` rows with provenance
    ``prov``: its dataset and split (or ``data``, that split opened with the labels a task
    needs), spread over the split when the store was."""
    from ...core.data.views import SpreadRows

    if data is None:
        data = open_dataset(prov["dataset"], prov["split"], **roots)
    if prov.get("subset") == "spread":
        return SpreadRows(data, n)
    if len(data) != n:
        raise ValueError(f"the store holds {n} rows, but {prov['dataset']}/{prov['split']} has "
                         f"{len(data)} images: it was built from another version of the data")
    return data


def run_extract_shard(*, spec: str, load: Mapping[str, Any], dataset: str, split: str,
                      images: int | None, shard: int, n_shards: int, layer: int, batch_size: int,
                      dtype: str, roots: Mapping[str, str], out: str) -> dict:
    """Shard ``shard`` of ``n_shards`` of the store of ``spec`` over ``images`` images of
    ``dataset``/``split`` spread evenly over it (:func:`store_images`,
    :func:`~.store.extract_store`)."""
    data = store_images(open_dataset(dataset, split, **roots), images)
    start, stop = shard_bounds(len(data), n_shards, shard, align=batch_size)
    log.info("%s on %s/%s: shard %d of %d = rows [%d, %d) of %d", spec, dataset, split, shard,
             n_shards, start, stop, len(data))
    prov = extract_store(load_model(spec, **load), data, out, layer=layer, start=start,
                         stop=stop, batch_size=batch_size, dtype=dtype)
    log.info("%s: %s", spec, prov["units"])
    return prov


def _write_components(h5, group: str, comp: Components) -> None:
    g = h5.create_group(group)
    for name in ("mean", "pc0", "top_norms"):
        create_checked(g, name, getattr(comp, name).astype(np.float32))
    create_checked(g, "top_images", comp.top_images.astype(np.int64))


def run_components(*, spec: str, load: Mapping[str, Any], store: str, cfg: Mapping[str, Any],
                   out: str) -> dict:
    """Per unit: mean, top-k images and norms, first component, out of core from the store;
    pairs in closed form from their scalars and the model's directions.  Writes ``out``
    (HDF5: one group per variant -- ``pairs``, or ``exact`` and ``published`` -- with ``mean``,
    ``pc0`` [U, D], ``top_norms``, ``top_images`` [U, k]; units flattened, the shape in the
    provenance)."""
    cfg = NeuronComponents.from_dict(cfg)
    with RowCache(store, KIND, {"model": spec}) as cache:
        prov = cache.provenance
        n = len(cache)
        if cfg.top_k > n:
            raise ValueError(f"neurons.components.top_k = {cfg.top_k} images per unit, but "
                             f"{store} holds {n}")
        results: dict[str, Components] = {}
        if prov["units"] == "pairs":
            pool = load_model(spec, **load).tower.attention_pool()
            u = pair_directions(pool).float().cpu().numpy()
            bias = pair_bias(pool).float().cpu().numpy()
            shape = list(u.shape[:2])
            # the means are the pairs' own (s u); the pool's bias, which the published pairs
            # share equally, is written beside them (pair_bias) for whoever wants that form
            results["pairs"] = pair_components(store_blocks(cache, "scalars", cfg.block_rows),
                                               u, cfg.top_k)
        else:
            shape = [int(cache.array("exact").shape[1])]
            for v in VARIANTS:
                results[v] = components(store_blocks(cache, v, cfg.block_rows), cfg.top_k)
    out_prov = {"model": spec, "kind": "neuron_components", "units": prov["units"],
                "unit_shape": shape, "dataset": prov.get("dataset"), "split": prov.get("split"),
                "images": n, "layer": prov.get("layer"), "config": cfg.to_dict(),
                "library_versions": library_versions()}
    with atomic_path(out) as tmp:
        import h5py

        with h5py.File(tmp, "w") as h5:
            for group, comp in results.items():
                _write_components(h5, group, comp)
            if prov["units"] == "pairs":
                create_checked(h5["pairs"], "pair_bias", bias.astype(np.float32))
            set_provenance(h5, out_prov)
            mark_complete(h5)
    log.info("%s: components of %d %s (%s) over %d images, top-%d", spec,
             int(np.prod(shape)), prov["units"], ", ".join(results), n, cfg.top_k)
    return out_prov


def read_components(path: str, spec: str) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """({variant: {mean, pc0, top_norms, top_images}}, provenance) of :func:`run_components`;
    refuses components of another model."""
    prov = check_provenance(path, {"model": spec, "kind": "neuron_components"})
    out = {}
    with open_h5(path) as h5:
        for group in h5:
            out[group] = {}
            for name in h5[group]:
                with reading(path, f"{group}/{name}"):
                    out[group][name] = h5[group][name][()]
    return out, prov


def unit_names(prov: Mapping[str, Any]) -> list[str]:
    """Readable unit names in flattened order: ``L{layer}.N{n}`` or ``H{h}.C{c}``."""
    shape = prov["unit_shape"]
    if prov["units"] == "pairs":
        return [f"H{h}.C{c}" for h in range(shape[0]) for c in range(shape[1])]
    return [f"L{prov['layer']}.N{n}" for n in range(shape[0])]


def run_sparse(*, spec: str, components_path: str, texts: str, cfg: Mapping[str, Any],
               table: Mapping[str, Any], out_json: str, out_txt: str, out_csv: str) -> dict:
    """Each unit's first component as ``cfg.k`` texts (:mod:`.sparse`), for every variant.
    Writes the JSON (per variant and unit: texts and weights), a readable text file of the
    ``table.top`` units of largest mean top-k norm, and their table (variant, rank, unit,
    mean_top_norm, texts)."""
    cfg, tab = NeuronSparse.from_dict(cfg), NeuronTable.from_dict(table)
    comps, prov = read_components(components_path, spec)
    names, emb, _ = read_texts(texts, spec)
    dictionary = text_dictionary(emb, cfg.normalise)
    units = unit_names(prov)
    result = {"model": spec, "units": prov["units"], "images": prov["images"],
              "n_texts": len(names), "config": cfg.to_dict(), "variants": {}}
    rows, lines = [], [f"Sparse text decomposition of {spec}'s {prov['units']} "
                       f"({prov['dataset']}/{prov['split']}, {prov['images']} images), k = "
                       f"{cfg.k} of {len(names)} texts, {cfg.normalise}-normalised\n"]
    for variant, comp in comps.items():
        res = sparse_decompose(comp["pc0"], dictionary, cfg.k)
        picked = top_texts(res, names)
        err = np.linalg.norm(comp["pc0"] - res.directions(dictionary), axis=1)
        result["variants"][variant] = {
            u: {"texts": [t for t, _ in p], "weights": [w for _, w in p],
                "residual": float(e)} for u, p, e in zip(units, picked, err)}
        strength = comp["top_norms"].mean(1)
        order = np.argsort(-strength, kind="stable")[:tab.top]
        lines.append(f"== {variant}: the {len(order)} units of largest mean top-k norm "
                     f"(median residual of the {cfg.k}-text fit {np.median(err):.3f})")
        for rank, i in enumerate(order, 1):
            shown = picked[i][:tab.texts]
            words = ", ".join(f"{t} ({w:+.2f})" for t, w in shown)
            lines.append(f"{rank:3d}. {units[i]:>12}  norm {strength[i]:.4g}  {words}")
            rows.append({"variant": variant, "rank": rank, "unit": units[i],
                         "mean_top_norm": float(strength[i]),
                         "texts": "; ".join(t for t, _ in shown),
                         "weights": "; ".join(f"{w:.4f}" for _, w in shown)})
        lines.append("")
    write_json_atomic(out_json, result)
    write_text_atomic(out_txt, "\n".join(lines) + "\n")
    write_table(out_csv, pd.DataFrame(rows, columns=["variant", "rank", "unit", "mean_top_norm",
                                                     "texts", "weights"]))
    log.info("%s: %d units x %d variants decomposed on %d texts", spec, len(units),
             len(comps), len(names))
    return result



def run_effects(*, spec: str, load: Mapping[str, Any], cfg: Mapping[str, Any],
                sparse: Mapping[str, Any], roots: Mapping[str, str], store: str,
                components_path: str, texts: str, out_csv: str, out_png: str) -> pd.DataFrame:
    """Zero-shot accuracy on ``cfg.task``'s images (the store of its split) with the units
    changed (:mod:`.analysis`): the model's own embeddings ("original"); every unit replaced by
    its first component ("component") and by its first n sparse texts ("texts", n in
    ``cfg.replace_n_texts``, one OMP run with the steps kept); the units below each percentile
    of mean top-k norm mean-ablated ("ablated").  ViT neurons: the exact variant, whose terms
    and the rest add up to the embedding.  Writes the table and its figure."""
    from ...core.text.zeroshot import argmax_accuracy, task_classifier

    cfg, sp = NeuronEffects.from_dict(cfg), NeuronSparse.from_dict(sparse)
    comps, prov = read_components(components_path, spec)
    variant = "pairs" if prov["units"] == "pairs" else "exact"
    comp = comps[variant]
    names, emb, _ = read_texts(texts, spec)
    dictionary = text_dictionary(emb, sp.normalise)
    steps = sorted(set(cfg.replace_n_texts))
    res = sparse_decompose(comp["pc0"], dictionary, max(steps), steps=steps)
    model = load_model(spec, **load)
    W, ds, _ = task_classifier(model, cfg.task, roots)
    n_units = comp["mean"].shape[0]
    with RowCache(store, KIND, {"model": spec}) as cache:
        n = len(cache)
        labels = store_view(cache.provenance, n, roots, ds).labels
        embeddings = cache.load("embeddings").astype(np.float64)
        # every change of the units in one list, computed in one pass over the store
        changes = [(np.full(n_units, KEEP), None), (np.full(n_units, REPLACE), comp["pc0"])]
        changes += [(np.full(n_units, REPLACE), res.directions(dictionary, k)) for k in steps]
        percentiles = sorted(set(cfg.percentiles))
        masks = [unit_mask(comp["top_norms"], p) for p in percentiles]
        changes += [(np.where(keep, KEEP, ABLATE), None) for keep in masks]
        if prov["units"] == "pairs":
            u = pair_directions(model.tower.attention_pool()).double().cpu().numpy()
            totals = changed_pairs(store_blocks(cache, "scalars"), u,
                                   pair_scalar_means(comp["mean"], u), changes)
        else:
            totals = changed_units(store_blocks(cache, "exact"), comp["mean"], changes)
    rest = embeddings - totals[0]  # what the units leave out: biases, other paths

    def acc(total):
        return argmax_accuracy(total, W, labels)

    rows = [{"what": "original", "n_texts": None, "percentile": None, "units_kept": n_units,
             "accuracy": acc(embeddings)},
            {"what": "component", "n_texts": None, "percentile": None, "units_kept": 0,
             "accuracy": acc(rest + totals[1])}]
    rows += [{"what": "texts", "n_texts": k, "percentile": None, "units_kept": 0,
              "accuracy": acc(rest + t)} for k, t in zip(steps, totals[2:2 + len(steps)])]
    rows += [{"what": "ablated", "n_texts": None, "percentile": p, "units_kept": int(keep.sum()),
              "accuracy": acc(rest + t)}
             for p, keep, t in zip(percentiles, masks, totals[2 + len(steps):])]
    chance = 1.0 / W.shape[1]
    table = pd.DataFrame(rows).assign(task=cfg.task, images=n, units=n_units, variant=variant,
                                      chance=chance)
    write_table(out_csv, table)
    what = prov["units"] if variant == "pairs" else f"neurons ({variant} variant)"
    plot_effects(table, out_png, f"{spec}: {n_units} {what}, {cfg.task}, {n} images")
    log.info("%s on %s: original %.4f, components %.4f, %d texts %.4f, top %.0f%% kept %.4f",
             spec, cfg.task, rows[0]["accuracy"], rows[1]["accuracy"], steps[-1],
             rows[1 + len(steps)]["accuracy"], 100 - max(cfg.percentiles), rows[-1]["accuracy"])
    return table


def pair_scalar_means(mean: np.ndarray, u: np.ndarray) -> np.ndarray:
    """mean(s) per pair [U] from the pairs' mean vectors ``mean(s) u`` [U, D] (written without
    the pool's bias, :func:`run_components`) and their directions u [H, C, D]."""
    uf = u.reshape(-1, u.shape[-1])
    nn = (uf * uf).sum(1)
    return np.divide((mean * uf).sum(1), nn, out=np.zeros(len(nn)), where=nn > 0)
