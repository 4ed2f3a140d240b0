"""Study 001 jobs: what each rule of rules/heads.smk computes, as library functions.

Each ``run_*`` function reads its inputs, checks their provenance (a decomposition cache built for
another model is refused), computes with :mod:`cliplens.textspan`, :mod:`cliplens.head_analysis`
and :mod:`cliplens.segmentation`, and writes its outputs atomically.  The workflow scripts only
unpack ``snakemake`` into these calls.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .head_analysis import (ablation_curves, centre_prior, class_direction, group_accuracies,
                            named_factor, nearest_neighbours, probe_factors, split_terms,
                            token_maps, variance_shares)
from .heads import read_decomposition
from .io import atomic_path, write_json_atomic, write_text_atomic
from .textspan import (accuracy, embeddings_from_terms, pc_explanations, project_on_basis,
                       textspan)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# inputs


def task_classifier(model, task_name: str, roots: Mapping[str, str],
                    templates: Sequence[str] | None = None):
    """(classifier [D, K] float32, the task's dataset split, class names) of zero-shot task
    ``task_name`` for ``model``."""
    from .data.registry import open_task
    from .zeroshot import build_classifier

    task, ds, classnames, tmpl = open_task(task_name, templates=templates, **roots)
    W = build_classifier(model, classnames, tmpl).cpu().numpy().T.astype(np.float32)
    return W, ds, classnames


def read_texts(path: str | os.PathLike, spec: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(texts, unit-norm embeddings [M, D], source of each text) written by :func:`run_texts`;
    refuses embeddings of another model."""
    with np.load(path, allow_pickle=False) as z:
        if str(z["model"]) != spec:
            raise ValueError(f"{path}: text embeddings of {z['model']}, not {spec}")
        return [str(t) for t in z["texts"]], z["embeddings"].astype(np.float32), \
            [str(s) for s in z["sources"]]


def _dec(path, spec: str, **kw) -> dict:
    return read_decomposition(path, {"model": spec}, **kw)


def _rows(dec: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(dec["index"], dtype=np.int64)


TERMS = ("heads", "heads_cls", "mlps", "embed", "attn_bias", "rest", "bias", "pool_mlp")


def _layer_sums(path, spec: str) -> dict:
    """A cache's terms with the heads summed per layer ([n, Lk, D]), read layer by layer."""
    return _dec(path, spec, arrays=TERMS, sum_heads=True)


def explained_heads(prov: Mapping[str, Any], last: int | None) -> list[tuple[int, int]]:
    """(block index, head) of every head of the last ``last`` kept layers of a cache with
    provenance ``prov`` (None = all kept layers), in layer-then-head order."""
    layers = list(prov["layers"])
    first = 0 if last is None else max(0, len(layers) - int(last))
    return [(layers[i], h) for i in range(first, len(layers)) for h in range(int(prov["heads"]))]


def chosen_heads(textspan_result: Mapping[str, Any], listed: Sequence, n: int
                 ) -> list[tuple[int, int]]:
    """The (block, head) pairs ``listed`` in the config, or else the ``n`` explained heads with
    the largest direct-effect variance (from :func:`run_textspan`'s result)."""
    if listed:
        return [tuple(x) for x in listed]
    ranked = sorted(textspan_result["heads"], key=lambda x: -x["variance"])
    return [(x["layer"], x["head"]) for x in ranked[:n]]


def load_heads(path, spec: str, heads: Sequence[tuple[int, int]]
               ) -> tuple[dict[tuple[int, int], np.ndarray], dict]:
    """The direct effects [n, D] (float64) of the (block, head) pairs ``heads`` of a cache
    (reading only their layers), and the cache's arrays ``index``/``provenance``."""
    from .io import check_provenance

    prov = check_provenance(path, {"model": spec})
    pos = {l: i for i, l in enumerate(prov["layers"])}
    bad = [x for x in heads if x[0] not in pos or not 0 <= x[1] < int(prov["heads"])]
    if bad:
        raise ValueError(f"{path}: heads {bad} are not in the cache (kept layers "
                         f"{prov['layers']}, {prov['heads']} heads each)")
    layers = sorted({pos[l] for l, _ in heads})
    dec = _dec(path, spec, arrays=("heads",), layers=layers)
    j = {p: k for k, p in enumerate(layers)}
    out = {(l, h): dec["heads"][:, j[pos[l]], h].astype(np.float64) for l, h in heads}
    return out, {"index": dec["index"], "provenance": dec["provenance"]}


# ---------------------------------------------------------------------------------------------
# text sets


def run_texts(model, sources: Sequence[str], n_words: int, out_path: str | os.PathLike) -> int:
    """Embed every text of ``sources`` (pooled, duplicates dropped, the first source kept) with
    ``model``; write ``texts``, ``sources``, ``embeddings`` [M, D] and ``model`` to an npz."""
    from .textsets import embed_texts, load_text_set

    texts, origin = [], []
    seen = set()
    for src in sources:
        for t in load_text_set(src, n_words):
            if t not in seen:
                seen.add(t)
                texts.append(t)
                origin.append(src)
    emb = embed_texts(model, texts)
    with atomic_path(out_path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, texts=np.asarray(texts), sources=np.asarray(origin),
                     embeddings=emb.astype(np.float32), model=np.asarray(model.spec))
    return len(texts)


# ---------------------------------------------------------------------------------------------
# TextSpan, PCs and head replacement


def run_textspan(spec: str, fit_cache, texts_path, cfg: Mapping[str, Any], out_json, out_txt,
                 out_csv, out_npz) -> dict:
    """TextSpan and PC explanations of every explained head on the fit images.  Writes the JSON
    (per head: texts, scores, cumulative explained variance, PCs with their top/bottom texts),
    a readable text file, a table (layer, head, rank, text, score, explained) and an npz with
    each head's TextSpan ``basis`` [m, D] and ``mean`` [D] (``L{l}.H{h}.basis`` ...), from which
    :func:`run_replacement` reconstructs other images without fitting again."""
    from .io import check_provenance

    heads_ix = explained_heads(check_provenance(fit_cache, {"model": spec}), cfg["layers"])
    effects, dec = load_heads(fit_cache, spec, heads_ix)
    texts, R, sources = read_texts(texts_path, spec)
    D = R.shape[1]
    nc = cfg["n_components"]
    nc = None if nc is None else min(int(nc), D)
    out_heads, rows, lines = [], [], []
    arrays = {"model": np.asarray(spec)}
    prov = dec["provenance"]
    lines.append(f"TextSpan of {spec} on {prov.get('dataset')}/{prov.get('split')} "
                 f"({len(dec['index'])} images), {len(texts)} texts "
                 f"({', '.join(dict.fromkeys(sources))}), scoring {cfg['scoring']}, "
                 f"n_components {nc}\n")
    for layer, h in heads_ix:
        C = effects[(layer, h)]
        res = textspan(C, R, cfg["n_texts"], nc, cfg["scoring"])
        pc = pc_explanations(C, R, cfg["pc_mass"], cfg["pc_texts"])
        chosen = res.texts(texts)
        arrays[f"L{layer}.H{h}.basis"] = res.basis
        arrays[f"L{layer}.H{h}.mean"] = res.mean
        var_total = float(((C - C.mean(0)) ** 2).sum(1).mean())
        out_heads.append({
            "layer": layer, "head": h, "texts": chosen, "scores": res.variance.tolist(),
            "explained": res.explained.tolist(), "variance": var_total,
            "pcs": {"rank": pc.rank, "explained": pc.explained,
                    "components": [{"singular_value": float(pc.singular_values[j]),
                                    "top": [texts[k] for k in pc.top[j]],
                                    "bottom": [texts[k] for k in pc.bottom[j]]}
                                   for j in range(min(pc.rank, 5))]},
        })
        lines.append(f"L{layer}.H{h}  (direct-effect variance {var_total:.4g}; "
                     f"{len(chosen)} texts explain {100 * res.explained[-1]:.1f} %)"
                     if len(chosen) else f"L{layer}.H{h}  (no text chosen)")
        for r, (t, s, e) in enumerate(zip(chosen, res.variance, res.explained)):
            rows.append({"layer": layer, "head": h, "rank": r + 1, "text": t, "score": s,
                         "explained": e})
            lines.append(f"    {r + 1:2d}. {t:<40s} score {s:.4g}  cumulative {100 * e:5.1f} %")
        lines.append(f"    PCs reaching {100 * cfg['pc_mass']:.0f} % of the singular values: "
                     f"{pc.rank} (explain {100 * pc.explained:.1f} % of the variance)")
        for j, comp in enumerate(out_heads[-1]["pcs"]["components"][:3]):
            lines.append(f"      PC{j + 1}: + {', '.join(comp['top'][:3])} | "
                         f"- {', '.join(comp['bottom'][:3])}")
        lines.append("")
    result = {"model": spec, "dataset": prov.get("dataset"), "split": prov.get("split"),
              "images": int(len(dec["index"])), "n_texts_available": len(texts),
              "text_sets": list(dict.fromkeys(sources)), "config": dict(cfg),
              "heads": out_heads}
    with atomic_path(out_npz, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    write_json_atomic(out_json, result)
    write_text_atomic(out_txt, "\n".join(lines) + "\n")
    with atomic_path(out_csv) as tmp:
        pd.DataFrame(rows, columns=["layer", "head", "rank", "text", "score", "explained"]
                     ).to_csv(tmp, index=False)
    return result


def run_replacement(spec: str, model, textspan_npz, task_caches: Mapping[str, str],
                    roots, cfg: Mapping[str, Any], out_csv) -> pd.DataFrame:
    """Accuracy of each task when every explained head is replaced by its TextSpan
    reconstruction from its first n texts (the basis :func:`run_textspan` fitted on the fit
    images, applied to the task's images), for n in ``cfg['replace_n_texts']``; with the
    unchanged model (n = -1) and all explained heads mean-ablated (n = 0) as the two ends."""
    fits = {}
    with np.load(textspan_npz, allow_pickle=False) as z:
        if str(z["model"]) != spec:
            raise ValueError(f"{textspan_npz}: TextSpan of {z['model']}, not {spec}")
        for k in z.files:
            if k.endswith(".basis"):
                name = k[: -len(".basis")]
                layer, head = (int(x[1:]) for x in name.split("."))
                fits[(layer, head)] = (z[k], z[name + ".mean"])
    n_max = max(cfg["replace_n_texts"])
    short = [f"L{l}.H{h}" for (l, h), (B, _) in fits.items() if len(B) < n_max]
    if short:
        raise ValueError(f"heads.textspan.replace_n_texts asks for {n_max} texts but TextSpan "
                         f"chose fewer for {short}: raise heads.textspan.n_texts")
    heads_ix = list(fits)
    rows = []
    for task, path in task_caches.items():
        ev = _layer_sums(path, spec)
        W, ds, _ = task_classifier(model, task, roots)
        labels = np.asarray(ds.labels)[_rows(ev)]
        attn, mlps, other = split_terms(ev)
        total = embeddings_from_terms(attn[:, :, None], mlps, other)
        del attn, mlps, other, ev
        base = accuracy(total, W, labels)
        effects, _ = load_heads(path, spec, heads_ix)
        removed = sum(effects.values())
        ablated = total - removed + sum(C.mean(0) for C in effects.values())
        rows.append({"task": task, "n_texts": 0, "accuracy": accuracy(ablated, W, labels),
                     "what": "mean-ablated"})
        for n in sorted(cfg["replace_n_texts"]):
            rep = total - removed + sum(project_on_basis(C, *fits[k], n) for k, C in effects.items())
            rows.append({"task": task, "n_texts": n, "accuracy": accuracy(rep, W, labels),
                         "what": "replaced"})
        rows.append({"task": task, "n_texts": -1, "accuracy": base, "what": "original"})
        log.info("%s: original %.4f, explained heads mean-ablated %.4f, replaced by %d texts "
                 "%.4f", task, base, rows[-len(cfg["replace_n_texts"]) - 2]["accuracy"], n_max,
                 rows[-2]["accuracy"])
    table = pd.DataFrame(rows)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table


# ---------------------------------------------------------------------------------------------
# ablation curves


def run_ablation(spec: str, model, task_caches: Mapping[str, str], roots, out_csv, out_png
                 ) -> pd.DataFrame:
    """Mean-ablation curves (attention, MLP, CLS -> CLS) per task; table and figure."""
    rows = []
    layers = None
    for task, path in task_caches.items():
        ev = _layer_sums(path, spec)
        layers = list(ev["provenance"]["layers"])
        W, ds, _ = task_classifier(model, task, roots)
        labels = np.asarray(ds.labels)[_rows(ev)]
        attn, mlps, other = split_terms(ev)
        curves = ablation_curves(attn, mlps, other, W, labels, ev.get("heads_cls"))
        del attn, mlps, other, ev
        for kind, acc in curves.items():
            for n, a in enumerate(acc):
                rows.append({"task": task, "ablated": kind, "layers_ablated": n,
                             "through_block": layers[n - 1] if n else -1, "accuracy": float(a),
                             "chance": 1.0 / W.shape[1]})
    table = pd.DataFrame(rows)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    plot_ablation(table, out_png, title=f"{spec}: mean-ablating the first l layers' direct effects")
    return table


# ---------------------------------------------------------------------------------------------
# toy ground truth: which factor each head carries


def run_factors(spec: str, fit_cache, test_cache, textspan_json, roots, top: int, out_csv,
                out_json, out_png) -> dict:
    """Per explained head: the factor its TextSpan texts name (among the first ``top``, each
    weighted by the variance it explains) and the factor that explains most of its direct
    effect (:func:`variance_shares`, fitted on the fit images, scored on the test images), and
    how often they agree.  Decoding scores (:func:`probe_factors`) are kept as ``decode_*``."""
    from .data.registry import open_dataset
    from .textsets import text_factors

    ts = json.loads(open(textspan_json).read())
    pairs = [(x["layer"], x["head"]) for x in ts["heads"]]
    fit_c, fit = load_heads(fit_cache, spec, pairs)
    test_c, test = load_heads(test_cache, spec, pairs)
    labels = {}
    for name, dec in (("fit", fit), ("test", test)):
        p = dec["provenance"]
        ds = open_dataset(p["dataset"], p["split"], **roots)
        if not hasattr(ds, "factor_labels"):
            raise ValueError(f"{p['dataset']} has no factor labels: the factor check needs the "
                             "toy world")
        labels[name] = {k: np.asarray(v)[_rows(dec)] for k, v in ds.factor_labels.items()}
    from .toyworld import FACTORS

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
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
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


def run_segmentation(spec: str, model, roots, cfg: Mapping[str, Any], texts_path, textspan_json,
                     out_csv, out_png) -> pd.DataFrame:
    """Zero-shot segmentation with the spatial map of each image's predicted class (per-token
    contributions of the last ``cfg['layers']`` layers on ``w_pred - mean_k w_k``), against
    the true masks, next to a centre-prior baseline; and a figure of maps: the class map and,
    for each head of ``cfg['heads']`` (default: the 3 with the largest direct-effect variance)
    and each text of ``cfg['texts']`` (default: the head's first TextSpan text), the head's
    per-token map on that text.  Heads must lie in the last ``cfg['layers']`` layers."""
    import torch

    from .data.registry import open_dataset
    from .heads import decompose
    from .segmentation import align_image, align_mask, segmentation_scores, upsample

    W, _, classnames = task_classifier(model, cfg["task"], roots)
    ds = open_dataset(cfg["dataset"], cfg["split"], **roots)
    n = len(ds) if cfg["images"] is None else min(len(ds), int(cfg["images"]))
    texts, R, _ = read_texts(texts_path, spec)
    ts = json.loads(open(textspan_json).read())
    by_head = {(x["layer"], x["head"]): x for x in ts["heads"]}
    heads_shown = chosen_heads(ts, cfg["heads"], 3)
    if cfg["texts"]:
        from .textsets import embed_texts

        E = embed_texts(model, list(cfg["texts"]))
        pairs = [(lh, t, E[j]) for lh in heads_shown for j, t in enumerate(cfg["texts"])]
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
    keep = list(range(max(0, blocks - int(cfg["layers"])), blocks))
    outside = sorted({lh for lh, _ in text_dir if lh[0] not in keep})
    if outside:
        raise ValueError(f"heads.segmentation.heads {outside} lie outside the last "
                         f"{cfg['layers']} layers (blocks {keep}): raise heads.segmentation.layers")
    maps, masks = [], []
    show: dict[str, list] = {"image": [], "mask": [], "class": [], "pred": []}
    show.update({k: [] for k in text_dir})
    size = None
    for a in range(0, n, cfg["batch_size"]):
        b = min(n, a + cfg["batch_size"])
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
        k = max(0, min(b, cfg["show"]) - a)
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
        rows.append({"model": spec, "dataset": cfg["dataset"], "split": cfg["split"],
                     "method": method, **s})
        log.info("%s: pixel accuracy %.4f, mIoU %.4f, mAP %.4f (n=%d)", method,
                 s["pixel_accuracy"], s["miou"], s["map"], s["n"])
    table = pd.DataFrame(rows)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    columns = {f"L{l}.H{h}: '{t}'": show[((l, h), t)] for (l, h), t in text_dir
                if show[((l, h), t)]}
    plot_spatial_maps(show, columns, out_png, title=(
        f"{spec}: spatial maps on {cfg['dataset']}/{cfg['split']} (red = raises the text's "
        f"score). 'class map': per-token direct effects of the last {len(keep)} layers on the "
        f"predicted class text minus the mean class;\nhead maps: one head on a text (default: "
        f"its first TextSpan text) minus the mean text.  Scores over {n} images: mIoU {rows[0]['miou']:.3f} "
        f"(centre prior {rows[1]['miou']:.3f})"))
    return table


# ---------------------------------------------------------------------------------------------
# nearest neighbours


def run_neighbours(spec: str, fit_cache, textspan_json, roots, cfg: Mapping[str, Any],
                   out_png) -> list:
    """For chosen heads (``cfg['heads']`` or the ``cfg['auto']`` with the largest direct-effect
    variance), the images whose direct effect through the head is most similar to a query's."""
    from .data.registry import open_dataset

    ts = json.loads(open(textspan_json).read())
    by_head = {(x["layer"], x["head"]): x for x in ts["heads"]}
    chosen = chosen_heads(ts, cfg["heads"], cfg["auto"])
    effects, dec = load_heads(fit_cache, spec, chosen)
    p = dec["provenance"]
    ds = open_dataset(p["dataset"], p["split"], **roots)
    rows_ix = _rows(dec)
    rng = np.random.default_rng(0)
    queries = sorted(rng.choice(len(rows_ix), size=min(cfg["queries"], len(rows_ix)),
                                replace=False).tolist())
    grid = []
    for layer, h in chosen:
        nn = nearest_neighbours(effects[(layer, h)], queries, cfg["k"])
        label = f"L{layer}.H{h}"
        if (layer, h) in by_head and by_head[(layer, h)]["texts"]:
            label += "\n" + "\n".join(by_head[(layer, h)]["texts"][:2])
        for q, row in zip(queries, nn):
            grid.append((label, ds.image(int(rows_ix[q])),
                         [ds.image(int(rows_ix[j])) for j in row]))
    plot_neighbours(grid, out_png, title=(
        f"{spec}: nearest neighbours by one head's direct effect (cosine after centring), "
        f"{p['dataset']}/{p['split']}; first column: query"))
    return chosen


# ---------------------------------------------------------------------------------------------
# spurious heads


def spurious_attribute(ds) -> tuple[np.ndarray, list[str]]:
    """The attribute a spurious-correlation dataset's label agrees with, and its value names:
    Waterbirds' ``places`` (land, water), toy-spurious' ``background`` (dark, light)."""
    if hasattr(ds, "places"):
        return np.asarray(ds.places), ["land", "water"]
    if hasattr(ds, "factor_labels") and "background" in ds.factor_labels:
        from .toyworld import classnames

        return np.asarray(ds.factor_labels["background"]), list(classnames("background"))
    raise ValueError(f"{ds.name} has no spurious attribute (places or background)")


def balanced_rows(labels: np.ndarray, attribute: np.ndarray, seed: int = 0) -> np.ndarray:
    """Row indices with every (label, attribute) group equally often (the smallest group's
    size), so that within them the attribute says nothing about the label."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero((labels == y) & (attribute == a))
              for y in np.unique(labels) for a in np.unique(attribute)]
    k = min(len(g) for g in groups)
    if k < 2:
        raise ValueError("a (label, attribute) group has fewer than 2 images: cannot balance")
    return np.sort(np.concatenate([rng.choice(g, k, replace=False) for g in groups]))


def run_spurious(spec: str, model, task_name: str, fit_cache, eval_cache, roots,
                 cfg: Mapping[str, Any], out_csv, out_png) -> dict:
    """Worst-group accuracy of ``task_name`` before and after mean-ablating the heads that carry
    the spurious attribute: ``cfg['heads']``, or the ``cfg['n_heads']`` heads whose direct
    effect the attribute explains most (:func:`variance_shares`, fitted on half of a
    group-balanced subset of the first ``cfg['fit_images']`` fit images and scored on the other
    half; balancing keeps heads that write the label itself from looking spurious)."""
    from .data.registry import get_task, open_dataset

    task = get_task(task_name)
    W, ds, classnames = task_classifier(model, task_name, roots)
    from .io import check_provenance

    pf = check_provenance(fit_cache, {"model": spec})
    layers, H = list(pf["layers"]), int(pf["heads"])
    fit = _dec(fit_cache, spec, arrays=())
    kw = {"label_key": task.label_key} if task.label_key else {}
    fds = open_dataset(pf["dataset"], pf["split"], **roots, **kw)
    limit = len(fit["index"]) if cfg["fit_images"] is None else int(cfg["fit_images"])
    frows = _rows(fit)[:limit]
    flabels = np.asarray(fds.labels)[frows]
    fattr = spurious_attribute(fds)[0][frows]
    scores = {}
    if cfg["heads"]:
        chosen = [tuple(x) for x in cfg["heads"]]
    else:
        bal = balanced_rows(flabels, fattr)
        half = np.zeros(len(bal), bool)
        half[::2] = True
        for i, layer in enumerate(layers):
            block = _dec(fit_cache, spec, arrays=("heads",), layers=[i])["heads"][:limit, 0]
            for h in range(H):
                C = block[bal, h].astype(np.float64)
                s = variance_shares(C[half], {"a": fattr[bal][half]}, C[~half],
                                    {"a": fattr[bal][~half]})["a"]
                scores[(layer, h)] = s
        chosen = sorted(scores, key=lambda k: -scores[k])[:cfg["n_heads"]]
    ev = _layer_sums(eval_cache, spec)
    erows = _rows(ev)
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
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    plot_spurious(table, summary, out_png, title=(
        f"{spec} on {task_name}: accuracy per group before and after mean-ablating "
        f"{', '.join(summary['ablated_heads'])}"))
    return summary


# ---------------------------------------------------------------------------------------------
# figures


def _plt():
    from .plots import plt

    return plt


def _save(fig, out_path) -> None:
    from .plots import _save as save

    save(fig, out_path)


def plot_ablation(table: pd.DataFrame, out_path, title: str) -> None:
    """One panel per task: accuracy against the number of layers ablated, one line per kind."""
    plt = _plt()
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    labels = {"attention": "attention heads", "mlp": "MLPs", "cls_to_cls": "CLS→CLS attention only"}
    for ax, task in zip(axes[0], tasks):
        t = table[table["task"] == task]
        for kind, g in t.groupby("ablated", sort=False):
            ax.plot(g["layers_ablated"], 100 * g["accuracy"], marker="o", label=labels.get(kind, kind))
        ax.axhline(100 * t["chance"].iloc[0], color="grey", ls=":", label="chance")
        ax.set_title(task)
        ax.set_xlabel("first l layers mean-ablated")
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("zero-shot accuracy (%)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, out_path)


def plot_factors(table: pd.DataFrame, factors: Sequence[str], out_path, title: str) -> None:
    plt = _plt()
    S = table[[f"r2_{f}" for f in factors]].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.4 + 1.0 * len(factors), 0.9 + 0.42 * len(table)))
    im = ax.imshow(S, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for r, row in enumerate(table.itertuples(index=False)):
        for c, f in enumerate(factors):
            ax.text(c, r, f"{S[r, c]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if S[r, c] < 0.6 else "black")
        ax.add_patch(plt.Rectangle((factors.index(row.probe_factor) - 0.5, r - 0.5), 1, 1,
                                   fill=False, ec="red", lw=2))
        if row.textspan_factor in factors:
            ax.plot(factors.index(row.textspan_factor) + 0.3, r - 0.25, "o", color="orange",
                    ms=6, mec="black")
    ax.set_xticks(range(len(factors)))
    ax.set_xticklabels(factors)
    ax.set_yticks(range(len(table)))
    ax.set_yticklabels([f"L{r.layer}.H{r.head}" for r in table.itertuples(index=False)], fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.05).set_label("variance share (R²)")
    ax.set_title(title, fontsize=8)
    _save(fig, out_path)


def plot_spatial_maps(show: Mapping, heads: Mapping[str, list], out_path, title: str) -> None:
    plt = _plt()
    n = len(show["image"])
    cols = 3 + len(heads)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n + 0.8), squeeze=False)
    for r in range(n):
        panels = [("image", show["image"][r], None), ("true mask", show["mask"][r], "gray"),
                  (f"class map\n(pred: {show['pred'][r]})", show["class"][r], "bwr")]
        panels += [(k, v[r], "bwr") for k, v in heads.items()]
        for c, (name, arr, cmap) in enumerate(panels):
            ax = axes[r][c]
            if cmap == "bwr":
                v = float(np.abs(arr).max()) or 1.0
                ax.imshow(show["image"][r], alpha=0.35)
                ax.imshow(arr, cmap=cmap, vmin=-v, vmax=v, alpha=0.75)
            else:
                ax.imshow(arr, cmap=cmap)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 or c == 2:
                ax.set_title(name, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (1.9 * n + 0.8)))
    _save(fig, out_path)


def plot_neighbours(grid, out_path, title: str) -> None:
    plt = _plt()
    k = len(grid[0][2]) if grid else 0
    fig, axes = plt.subplots(len(grid), k + 1, figsize=(1.3 * (k + 1) + 1.6, 1.3 * len(grid) + 0.6),
                             squeeze=False)
    for r, (label, q, nn) in enumerate(grid):
        for c, im in enumerate([q] + list(nn)):
            ax = axes[r][c]
            ax.imshow(np.asarray(im))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
                for s in ax.spines.values():
                    s.set_color("red")
                    s.set_linewidth(2)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (1.3 * len(grid) + 0.6)))
    _save(fig, out_path)


def plot_spurious(table: pd.DataFrame, summary: Mapping, out_path, title: str) -> None:
    plt = _plt()
    groups = list(dict.fromkeys(table["group"]))
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(groups), 3.4))
    for j, cond in enumerate(("before", "after")):
        t = table[table["condition"] == cond].set_index("group").reindex(groups)
        ax.bar(x + (j - 0.5) * 0.38, 100 * t["accuracy"], 0.38,
               label=f"{cond}: mean {100 * summary[cond]['mean']:.1f} %, worst group "
                     f"{100 * summary[cond]['worst']:.1f} %")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{g}\n(n={int(n)})" for g, n in
                        zip(groups, table[table['condition'] == 'before'].set_index('group')
                            .reindex(groups)['n'])], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, out_path)
