"""Study 001 jobs: one ``run_*`` per rule of ``rules/heads.smk``, called by
``workflow_scripts/heads/<rule>.py`` with the rule's params, inputs and outputs.  Each reads its
inputs, checks their provenance (a decomposition cache built for another model is refused),
computes with :mod:`.textspan`, :mod:`.analysis` and :mod:`cliplens.core.segmentation`, and
writes its outputs atomically.

``load``: :func:`~cliplens.core.models.registry.load_model`'s keyword arguments; ``roots``: the
``results`` and ``resources`` folders datasets are opened from; ``cfg``: the rule's slice of the
``heads`` settings, as plain values.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ...core.caches.rows import shard_bounds
from ...core.data.registry import open_dataset
from ...core.factors import named_factor, variance_shares
from ...core.io import (check_provenance, write_json_atomic, write_npz, write_table,
                        write_text_atomic)
from ...core.models.registry import load_model
from ...core.settings import (NeighbourSettings, SegmentationSettings, SpuriousSettings,
                              TextSpanSettings)
from ...core.text.textsets import read_texts, text_factors
from ...core.text.zeroshot import argmax_accuracy as accuracy
from ...core.text.zeroshot import class_direction, task_classifier
from ...core.toy.world import FACTORS
from .analysis import (ablation_curves, balanced_rows, group_accuracies, nearest_neighbours,
                       probe_factors, split_terms, spurious_attribute, token_maps)
from .figures import plot_ablation, plot_factors, plot_neighbours, plot_spatial_maps, plot_spurious
from .store import (chosen_heads, explained_heads, extract_decomposition, layer_sums, load_heads,
                    read_heads_cache, rows_of)
from .textspan import embeddings_from_terms, explain_head, head_report, project_on_basis

log = logging.getLogger("cliplens")


# ---------------------------------------------------------------------------------------------
# decomposition caches and text sets


def run_decompose_shard(*, spec: str, load: Mapping[str, Any], dataset: str, split: str,
                        shard: int, n_shards: int, layers, batch_size: int, dtype: str,
                        roots: Mapping[str, str], out: str) -> dict:
    """Decompose shard ``shard`` of ``n_shards`` of ``dataset``/``split`` into heads, MLPs and
    the rest (:func:`~.store.extract_decomposition`), keeping ``layers``."""
    data = open_dataset(dataset, split, **roots)
    start, stop = shard_bounds(len(data), n_shards, shard, align=batch_size)
    log.info("%s on %s/%s: shard %d of %d = rows [%d, %d) of %d, layers %s", spec, dataset, split,
             shard, n_shards, start, stop, len(data), layers)
    prov = extract_decomposition(load_model(spec, **load), data, out, layers=layers, start=start,
                                 stop=stop, batch_size=batch_size, dtype=dtype)
    log.info("kept layers %s, %d heads each (%s)", prov["layers"], prov["heads"],
             prov["kind_decomposition"])
    return prov


# ---------------------------------------------------------------------------------------------
# TextSpan, PCs and head replacement


def run_textspan(*, spec: str, cfg: Mapping[str, Any], fit: str, texts: str, out_json: str,
                 out_txt: str, out_csv: str, out_npz: str) -> dict:
    """TextSpan and PC explanations of every explained head on the fit images.  Writes the JSON
    (per head: texts, scores, cumulative explained variance, PCs with their top/bottom texts),
    a readable text file, a table (layer, head, rank, text, score, explained) and an npz with
    each head's TextSpan ``basis`` [m, D] and ``mean`` [D] (``L{l}.H{h}.basis`` ...), from which
    :func:`run_replacement` reconstructs other images without fitting again.  ``cfg``: the
    ``heads.textspan`` settings."""
    cfg = TextSpanSettings.from_dict(cfg)
    heads_ix = explained_heads(check_provenance(fit, {"model": spec}), cfg.layers)
    effects, dec = load_heads(fit, spec, heads_ix)
    names, R, sources = read_texts(texts, spec)
    texts = names
    D = R.shape[1]
    nc = cfg.n_components
    nc = None if nc is None else min(int(nc), D)
    out_heads, rows, lines = [], [], []
    arrays = {"model": np.asarray(spec)}
    prov = dec["provenance"]
    lines.append(f"TextSpan of {spec} on {prov.get('dataset')}/{prov.get('split')} "
                 f"({len(dec['index'])} images), {len(texts)} texts "
                 f"({', '.join(dict.fromkeys(sources))}), scoring {cfg.scoring}, "
                 f"n_components {nc}\n")
    for layer, h in heads_ix:
        entry, res = explain_head(effects[(layer, h)], R, texts, cfg, nc)
        arrays[f"L{layer}.H{h}.basis"] = res.basis
        arrays[f"L{layer}.H{h}.mean"] = res.mean
        out_heads.append({"layer": layer, "head": h, **entry})
        rows += [{"layer": layer, "head": h, "rank": r + 1, "text": t, "score": sc,
                  "explained": e}
                 for r, (t, sc, e) in enumerate(zip(entry["texts"], res.variance, res.explained))]
        lines += head_report(f"L{layer}.H{h}", entry, cfg.pc_mass)
    chosen = [len(h["texts"]) for h in out_heads]
    at_rank = sum(bool(h["stopped_at_text_rank"]) for h in out_heads)
    most = min(cfg.n_texts, len(texts), D, D if nc is None else nc)
    if chosen and max(chosen) < cfg.n_texts:
        cap = (f"heads.textspan.n_texts = {cfg.n_texts} asked, {min(chosen)}..{max(chosen)} "
               f"texts chosen per head: TextSpan picks at most min({len(texts)} candidate "
               f"texts, embedding dim {D}, n_components {nc}) = {most} directions, and stops "
               f"when the texts left span no direction (the text set's numerical rank, "
               f"rank_rtol {cfg.rank_rtol:g}: {at_rank} heads stopped there) or none of the "
               f"head's remaining variance")
        log.warning("%s: %s", spec, cap)
        lines.insert(1, f"({cap})\n")
    result = {"model": spec, "dataset": prov.get("dataset"), "split": prov.get("split"),
              "images": int(len(dec["index"])), "n_texts_available": len(texts),
              "n_texts_asked": int(cfg.n_texts), "n_texts_chosen": chosen,
              "text_sets": list(dict.fromkeys(sources)), "config": cfg.to_dict(),
              "heads": out_heads}
    write_npz(out_npz, arrays)
    write_json_atomic(out_json, result)
    write_text_atomic(out_txt, "\n".join(lines) + "\n")
    write_table(out_csv, pd.DataFrame(
        rows, columns=["layer", "head", "rank", "text", "score", "explained"]))
    log.info("%s: %d heads explained with %s texts each (n_texts %d)", spec, len(out_heads),
             f"{min(chosen)}..{max(chosen)}" if chosen else 0, cfg.n_texts)
    return result


def run_replacement(*, spec: str, load: Mapping[str, Any], cfg: Mapping[str, Any],
                    roots: Mapping[str, str], textspan: str, caches: Mapping[str, str],
                    out: str) -> pd.DataFrame:
    """Accuracy of each task when every explained head is replaced by its TextSpan
    reconstruction from its first n texts (the basis :func:`run_textspan` fitted on the fit
    images, applied to the task's images), for n in ``cfg.replace_n_texts``; with the
    unchanged model (n = -1) and all explained heads mean-ablated (n = 0) as the two ends.
    ``caches``: task -> decomposition cache of the task's split."""
    cfg = TextSpanSettings.from_dict(cfg)
    model = load_model(spec, **load)
    fits = {}
    with np.load(textspan, allow_pickle=False) as z:
        if str(z["model"]) != spec:
            raise ValueError(f"{textspan}: TextSpan of {z['model']}, not {spec}")
        for k in z.files:
            if k.endswith(".basis"):
                name = k[: -len(".basis")]
                layer, head = (int(x[1:]) for x in name.split("."))
                fits[(layer, head)] = (z[k], z[name + ".mean"])
    n_max = max(cfg.replace_n_texts)
    short = [f"L{l}.H{h}" for (l, h), (B, _) in fits.items() if len(B) < n_max]
    if short:
        found = min(len(B) for B, _ in fits.values())
        advice = ("raise heads.textspan.n_texts" if cfg.n_texts < n_max else
                  f"TextSpan found no more (see textspan.txt): lower "
                  f"heads.textspan.replace_n_texts to at most {found}")
        raise ValueError(f"heads.textspan.replace_n_texts asks for {n_max} texts but TextSpan "
                         f"chose fewer for {short} ({found} for the fewest): {advice}")
    heads_ix = list(fits)
    rows = []
    for task, path in caches.items():
        ev = layer_sums(path, spec)
        W, ds, _ = task_classifier(model, task, roots)
        labels = np.asarray(ds.labels)[rows_of(ev)]
        attn, mlps, other = split_terms(ev)
        total = embeddings_from_terms(attn[:, :, None], mlps, other)
        del attn, mlps, other, ev
        base = accuracy(total, W, labels)
        effects, _ = load_heads(path, spec, heads_ix)
        removed = sum(effects.values())
        ablated = total - removed + sum(C.mean(0) for C in effects.values())
        rows.append({"task": task, "n_texts": 0, "accuracy": accuracy(ablated, W, labels),
                     "what": "mean-ablated"})
        for n in sorted(cfg.replace_n_texts):
            rep = total - removed + sum(project_on_basis(C, *fits[k], n) for k, C in effects.items())
            rows.append({"task": task, "n_texts": n, "accuracy": accuracy(rep, W, labels),
                         "what": "replaced"})
        rows.append({"task": task, "n_texts": -1, "accuracy": base, "what": "original"})
        log.info("%s: original %.4f, explained heads mean-ablated %.4f, replaced by %d texts "
                 "%.4f", task, base, rows[-len(cfg.replace_n_texts) - 2]["accuracy"], n_max,
                 rows[-2]["accuracy"])
    table = pd.DataFrame(rows)
    write_table(out, table)
    return table


# ---------------------------------------------------------------------------------------------
# ablation curves


def run_ablation(*, spec: str, load: Mapping[str, Any], roots: Mapping[str, str],
                 caches: Mapping[str, str], out_csv: str, out_png: str) -> pd.DataFrame:
    """Mean-ablation curves (attention, MLP, CLS -> CLS) per task (``caches``: task ->
    decomposition cache of its split); the table and its figure."""
    model = load_model(spec, **load)
    rows = []
    layers = None
    for task, path in caches.items():
        ev = layer_sums(path, spec)
        layers = list(ev["provenance"]["layers"])
        W, ds, _ = task_classifier(model, task, roots)
        labels = np.asarray(ds.labels)[rows_of(ev)]
        attn, mlps, other = split_terms(ev)
        curves = ablation_curves(attn, mlps, other, W, labels, ev.get("heads_cls"))
        del attn, mlps, other, ev
        for kind, acc in curves.items():
            for n, a in enumerate(acc):
                rows.append({"task": task, "ablated": kind, "layers_ablated": n,
                             "through_block": layers[n - 1] if n else -1, "accuracy": float(a),
                             "chance": 1.0 / W.shape[1]})
    table = pd.DataFrame(rows)
    write_table(out_csv, table)
    plot_ablation(table, out_png, title=f"{spec}: mean-ablating the first l layers' direct effects")
    return table


# ---------------------------------------------------------------------------------------------
# toy ground truth: which factor each head carries


def run_factors(*, spec: str, top: int, roots: Mapping[str, str], fit: str, test: str,
                textspan: str, out_csv: str, out_json: str, out_png: str) -> dict:
    """Per explained head: the factor its TextSpan texts name (among the first ``top``, each
    weighted by the variance it explains) and the factor that explains most of its direct
    effect (:func:`variance_shares`, fitted on the fit images, scored on the test images), and
    how often they agree.  Decoding scores (:func:`probe_factors`) are kept as ``decode_*``."""
    ts = json.loads(Path(textspan).read_text())
    pairs = [(x["layer"], x["head"]) for x in ts["heads"]]
    fit_c, fit_dec = load_heads(fit, spec, pairs)
    test_c, test_dec = load_heads(test, spec, pairs)
    labels = {}
    for name, dec in (("fit", fit_dec), ("test", test_dec)):
        p = dec["provenance"]
        ds = open_dataset(p["dataset"], p["split"], **roots)
        if not hasattr(ds, "factor_labels"):
            raise ValueError(f"{p['dataset']} has no factor labels: the factor check needs the "
                             "toy world")
        labels[name] = {k: np.asarray(v)[rows_of(dec)] for k, v in ds.factor_labels.items()}
    factors = [f for f in FACTORS if f in labels["fit"]]
    rows = []
    for head in ts["heads"]:
        h = head["head"]
        C_fit, C_test = fit_c[(head["layer"], h)], test_c[(head["layer"], h)]
        y_fit = {f: labels["fit"][f] for f in factors}
        y_test = {f: labels["test"][f] for f in factors}
        shares = variance_shares(C_fit, y_fit, C_test, y_test)
        decode = probe_factors(C_fit, y_fit, C_test, y_test)
        best = max(shares, key=lambda f: shares[f])
        gains = np.diff(np.concatenate([[0.0], head["explained"]]))
        named = named_factor(head["texts"], text_factors, top, gains)
        row = {"layer": head["layer"], "head": h, "textspan_factor": named,
               "probe_factor": best, "probe_r2": shares[best], "agree": named == best,
               "top_texts": " | ".join(head["texts"][:top])}
        row.update({f"r2_{f}": shares[f] for f in factors})
        row.update({f"decode_{f}": decode[f]["score"] for f in factors})
        rows.append(row)
    table = pd.DataFrame(rows)
    write_table(out_csv, table)
    informative = table[table["probe_r2"] >= 0.2]
    summary = {"model": spec, "heads": len(table), "agree": int(table["agree"].sum()),
               "agreement": float(table["agree"].mean()) if len(table) else float("nan"),
               "informative_heads": len(informative),
               "agreement_informative": float(informative["agree"].mean())
               if len(informative) else float("nan"),
               "chance_agreement": 1.0 / len(factors), "top": top, "factors": factors}
    write_json_atomic(out_json, summary)
    plot_factors(table, factors, out_png, title=(
        f"{spec}: which factor does each head write? share of its direct-effect variance each "
        f"factor explains (held-out R²);\nbox = probe's factor, dot = factor named by its first "
        f"{top} TextSpan texts; agreement {summary['agree']}/{summary['heads']}"))
    return summary


# ---------------------------------------------------------------------------------------------
# segmentation and spatial maps


def run_segmentation(*, spec: str, load: Mapping[str, Any], cfg: Mapping[str, Any],
                     roots: Mapping[str, str], texts: str, textspan: str, out_csv: str,
                     out_png: str, out_maps: str) -> pd.DataFrame:
    """Zero-shot segmentation with the spatial map of each image's predicted class (per-token
    contributions of the last ``cfg.layers`` layers on ``w_pred - mean_k w_k``), against
    the true masks, next to a centre-prior baseline; and a figure of maps: the class map and,
    for each head of ``cfg.heads`` (default: the 3 with the largest direct-effect variance)
    and each text of ``cfg.texts`` (default: the head's first TextSpan text), the head's
    per-token map on that text.  Heads must lie in the last ``cfg.layers`` layers.  The maps
    drawn go to ``out_maps`` (npz: ``image``, ``mask``, ``class_map`` and one array per head
    map, in figure order; ``columns`` names them)."""
    import torch

    from ...core.segmentation import (align_image, align_mask, centre_prior,
                                      segmentation_scores, upsample)
    from ...core.text.textsets import embed_texts
    from .decompose import decompose

    cfg = SegmentationSettings.from_dict(cfg)
    model = load_model(spec, **load)
    W, _, classnames = task_classifier(model, cfg.task, roots)
    ds = open_dataset(cfg.dataset, cfg.split, **roots)
    n = len(ds) if cfg.images is None else min(len(ds), int(cfg.images))
    texts, R, _ = read_texts(texts, spec)
    ts = json.loads(Path(textspan).read_text())
    by_head = {(x["layer"], x["head"]): x for x in ts["heads"]}
    heads_shown = chosen_heads(ts, cfg.heads, 3)
    if cfg.texts:
        E = embed_texts(model, list(cfg.texts))
        pairs = [(lh, t, E[j]) for lh in heads_shown for j, t in enumerate(cfg.texts)]
    else:
        missing = [lh for lh in heads_shown if not by_head.get(lh, {}).get("texts")]
        if missing:
            raise ValueError(f"heads.segmentation.heads {missing} have no TextSpan texts: "
                             "explain them (heads.textspan.layers) or give heads.segmentation.texts")
        pairs = [(lh, by_head[lh]["texts"][0], R[texts.index(by_head[lh]["texts"][0])])
                 for lh in heads_shown]
    # each map scores what raises the text against an average text of the set
    text_dir = {(lh, t): e - R.mean(0) for lh, t, e in pairs}
    blocks = len(list(model.vision_blocks))
    keep = list(range(max(0, blocks - int(cfg.layers)), blocks))
    outside = sorted({lh for lh, _ in text_dir if lh[0] not in keep})
    if outside:
        raise ValueError(f"heads.segmentation.heads {outside} lie outside the last "
                         f"{cfg.layers} layers (blocks {keep}): raise heads.segmentation.layers")
    maps, masks = [], []
    show: dict[str, list] = {"image": [], "mask": [], "class": [], "pred": []}
    show.update({k: [] for k in text_dir})
    size = None
    for a in range(0, n, cfg.batch_size):
        b = min(n, a + cfg.batch_size)
        images = [ds.image(i) for i in range(a, b)]
        pixels = model.preprocess(images).to(model.device)
        size = pixels.shape[-1]
        dec = decompose(model, pixels, keep, per_token=True)
        z = dec.total().cpu().numpy()
        pred = np.argmax(z @ W, 1)
        tokens = dec.tokens.cpu().numpy()
        m = token_maps(tokens, class_direction(W, pred), has_cls=dec.kind == "cls").sum((1, 2))
        maps.append(upsample(m, size))
        masks += [align_mask(ds.mask(i), size) for i in range(a, b)]
        k = max(0, min(b, cfg.show) - a)
        if k:
            show["image"] += [align_image(im, size) for im in images[:k]]
            show["mask"] += masks[a:a + k]
            show["class"] += list(maps[-1][:k])
            show["pred"] += [classnames[j] for j in pred[:k]]
            li = {l: j for j, l in enumerate(dec.layers)}
            for ((layer, h), t), d in text_dir.items():
                if layer in li:
                    hm = token_maps(tokens[:k, li[layer]:li[layer] + 1, h:h + 1], d,
                                    has_cls=dec.kind == "cls")[:, 0, 0]
                    show[((layer, h), t)] += list(upsample(hm, size))
        del dec, tokens
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    maps = np.concatenate(maps)
    prior = np.broadcast_to(centre_prior(size), maps.shape)
    rows = []
    for method, mp in ((f"class map, last {len(keep)} layers' heads", maps),
                       ("centre prior (baseline)", prior)):
        s = segmentation_scores(mp, masks)
        rows.append({"model": spec, "dataset": cfg.dataset, "split": cfg.split,
                     "method": method, **s})
        log.info("%s: pixel accuracy %.4f, mIoU %.4f, mAP %.4f (n=%d)", method,
                 s["pixel_accuracy"], s["miou"], s["map"], s["n"])
    table = pd.DataFrame(rows)
    write_table(out_csv, table)
    columns = {f"L{l}.H{h}: '{t}'": show[((l, h), t)] for (l, h), t in text_dir
               if show[((l, h), t)]}
    write_npz(out_maps, {"image": np.asarray(show["image"]), "mask": np.asarray(show["mask"]),
                         "class_map": np.asarray(show["class"]),
                         "predicted": np.asarray(show["pred"]),
                         "columns": np.asarray(list(columns)),
                         **{f"head_map_{j}": np.asarray(v)
                            for j, v in enumerate(columns.values())}})
    plot_spatial_maps(show, columns, out_png, title=(
        f"{spec}: spatial maps on {cfg.dataset}/{cfg.split} (red = raises the text's "
        f"score). 'class map': per-token direct effects of the last {len(keep)} layers on the "
        f"predicted class text minus the mean class;\nhead maps: one head on a text (default: "
        f"its first TextSpan text) minus the mean text.  Scores over {n} images: mIoU {rows[0]['miou']:.3f} "
        f"(centre prior {rows[1]['miou']:.3f})"))
    return table


# ---------------------------------------------------------------------------------------------
# nearest neighbours


def run_neighbours(*, spec: str, cfg: Mapping[str, Any], roots: Mapping[str, str], fit: str,
                   textspan: str, out_png: str, out_csv: str) -> pd.DataFrame:
    """For chosen heads (``cfg.heads`` or the ``cfg.auto`` with the largest direct-effect
    variance), the images whose direct effect through the head is most similar to a query's;
    the figure and its table (head, query row, rank, neighbour row, cosine after centring)."""
    cfg = NeighbourSettings.from_dict(cfg)
    ts = json.loads(Path(textspan).read_text())
    by_head = {(x["layer"], x["head"]): x for x in ts["heads"]}
    chosen = chosen_heads(ts, cfg.heads, cfg.auto)
    effects, dec = load_heads(fit, spec, chosen)
    p = dec["provenance"]
    ds = open_dataset(p["dataset"], p["split"], **roots)
    rows_ix = rows_of(dec)
    rng = np.random.default_rng(0)
    queries = sorted(rng.choice(len(rows_ix), size=min(cfg.queries, len(rows_ix)),
                                replace=False).tolist())
    grid, table = [], []
    for layer, h in chosen:
        nn, sims = nearest_neighbours(effects[(layer, h)], queries, cfg.k, with_similarity=True)
        label = f"L{layer}.H{h}"
        if (layer, h) in by_head and by_head[(layer, h)]["texts"]:
            label += "\n" + "\n".join(by_head[(layer, h)]["texts"][:2])
        for q, row, sim in zip(queries, nn, sims):
            grid.append((label, ds.image(int(rows_ix[q])),
                         [ds.image(int(rows_ix[j])) for j in row]))
            table += [{"layer": layer, "head": h, "query": int(rows_ix[q]), "rank": r + 1,
                       "neighbour": int(rows_ix[j]), "cosine": float(c)}
                      for r, (j, c) in enumerate(zip(row, sim))]
    table = pd.DataFrame(table, columns=["layer", "head", "query", "rank", "neighbour", "cosine"])
    write_table(out_csv, table)
    plot_neighbours(grid, out_png, title=(
        f"{spec}: nearest neighbours by one head's direct effect (cosine after centring), "
        f"{p['dataset']}/{p['split']}; first column: query"))
    log.info("%s: neighbours of heads %s", spec, chosen)
    return table


def run_spurious(*, spec: str, load: Mapping[str, Any], task: str, cfg: Mapping[str, Any],
                 roots: Mapping[str, str], fit: str, eval: str, out_csv: str, out_json: str,
                 out_png: str) -> dict:
    """Worst-group accuracy of ``task_name`` before and after mean-ablating the heads that carry
    the spurious attribute: ``cfg.heads``, or the ``cfg.n_heads`` heads whose direct
    effect the attribute explains most (:func:`variance_shares`, fitted on half of a
    group-balanced subset of the first ``cfg.fit_images`` fit images and scored on the other
    half; balancing keeps heads that write the label itself from looking spurious).  The
    summary goes to ``out_json``."""
    from ...core.data.tasks import get_task

    cfg = SpuriousSettings.from_dict(cfg)
    task_name, fit_cache, eval_cache = task, fit, eval
    task = get_task(task_name)
    model = load_model(spec, **load)
    W, ds, classnames = task_classifier(model, task_name, roots)
    pf = check_provenance(fit_cache, {"model": spec})
    layers, H = list(pf["layers"]), int(pf["heads"])
    fit = read_heads_cache(fit_cache, spec, arrays=())
    kw = {"label_key": task.label_key} if task.label_key else {}
    fds = open_dataset(pf["dataset"], pf["split"], **roots, **kw)
    limit = len(fit["index"]) if cfg.fit_images is None else int(cfg.fit_images)
    frows = rows_of(fit)[:limit]
    flabels = np.asarray(fds.labels)[frows]
    fattr = spurious_attribute(fds)[0][frows]
    scores = {}
    if cfg.heads:
        chosen = [tuple(x) for x in cfg.heads]
    else:
        bal = balanced_rows(flabels, fattr)
        half = np.zeros(len(bal), bool)
        half[::2] = True
        for i, layer in enumerate(layers):
            block = read_heads_cache(fit_cache, spec, arrays=("heads",),
                                     layers=[i])["heads"][:limit, 0]
            for h in range(H):
                C = block[bal, h].astype(np.float64)
                s = variance_shares(C[half], {"a": fattr[bal][half]}, C[~half],
                                    {"a": fattr[bal][~half]})["a"]
                scores[(layer, h)] = s
        chosen = sorted(scores, key=lambda k: -scores[k])[:cfg.n_heads]
    ev = layer_sums(eval_cache, spec)
    erows = rows_of(ev)
    labels = np.asarray(ds.labels)[erows]
    attr, attr_names = spurious_attribute(ds)
    attr = attr[erows]
    groups = labels * len(attr_names) + attr
    names = {y * len(attr_names) + a: f"{classnames[y]}, {attr_names[a]}"
             for y in range(len(classnames)) for a in range(len(attr_names))}
    attn, mlps, other = split_terms(ev)
    total = embeddings_from_terms(attn[:, :, None], mlps, other)
    del attn, mlps, other, ev
    effects, _ = load_heads(eval_cache, spec, chosen)
    ablated = total + sum(C.mean(0) - C for C in effects.values())
    rows, summary = [], {"model": spec, "task": task_name,
                         "ablated_heads": [f"L{l}.H{h}" for l, h in chosen],
                         "probe_scores": {f"L{l}.H{h}": s for (l, h), s in scores.items()}}
    for cond, z in (("before", total), ("after", ablated)):
        pred = np.argmax(z @ W, 1)
        accs = group_accuracies(pred, labels, groups)
        for g, a in accs.items():
            rows.append({"condition": cond, "group": names.get(g, str(g)), "accuracy": a,
                         "n": int((groups == g).sum())})
        summary[cond] = {"mean": float((pred == labels).mean()), "worst": min(accs.values())}
        log.info("%s: accuracy %.4f, worst group %.4f", cond, summary[cond]["mean"],
                 summary[cond]["worst"])
    table = pd.DataFrame(rows)
    write_table(out_csv, table)
    write_json_atomic(out_json, summary)
    plot_spurious(table, summary, out_png, title=(
        f"{spec} on {task_name}: accuracy per group before and after mean-ablating "
        f"{', '.join(summary['ablated_heads'])}"))
    return summary
