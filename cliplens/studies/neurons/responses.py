"""Study 003 jobs of what the units respond to, one ``run_*`` per rule of
``rules/neurons.smk`` (``neurons_retrieval``, ``neurons_segmentation``, ``neurons_shift``,
``neurons_evidence``), called by ``workflow_scripts/neurons/<rule>.py``.  They read the store,
components and sparse texts that :mod:`.jobs` writes; arguments as there.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ...core.caches.rows import RowCache
from ...core.io import write_json_atomic, write_table
from ...core.models.registry import load_model
from .jobs import pair_scalar_means, read_components, store_images, store_view, unit_names
from .pairs import pair_directions
from .store import KIND, store_blocks

log = logging.getLogger("cliplens")


def _variant(prov: Mapping[str, Any]) -> str:
    """The variant the analyses use: ``pairs``, or ``exact`` for ViT neurons (the one whose
    terms add up to the embedding)."""
    return "pairs" if prov["units"] == "pairs" else "exact"


def _read_sparse(path: str, spec: str, variant: str, units: list[str]) -> list[dict]:
    """Each unit's sparse texts and weights (:func:`run_sparse`), in unit order; refuses a
    decomposition of another model."""
    import json
    from pathlib import Path

    data = json.loads(Path(path).read_text())
    if data.get("model") != spec:
        raise ValueError(f"{path} decomposes {data.get('model')!r}, not {spec!r}: rerun its rule")
    by_unit = data["variants"][variant]
    return [by_unit[u] for u in units]


def _activations(cache: RowCache, model, comps, prov, units, variant: str | None = None
                 ) -> np.ndarray:
    """Activations [N, len(units)] of a store's units along their first components
    (:func:`~.analysis.pair_projections` / :func:`~.analysis.unit_projections`), in one pass."""
    from .analysis import pair_projections, unit_projections

    variant = variant or _variant(prov)
    comp = comps[variant]
    if prov["units"] == "pairs":
        u = pair_directions(model.tower.attention_pool()).double().cpu().numpy()
        return pair_projections(store_blocks(cache, "scalars"), u,
                                pair_scalar_means(comp["mean"], u), comp["pc0"], units)
    return unit_projections(store_blocks(cache, variant), comp["mean"], comp["pc0"], units)


def _where(view) -> str:
    return f"{view.name}/{view.split}"


def _top(values: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-values, kind="stable")[:k]


def run_retrieval(*, spec: str, load: Mapping[str, Any], cfg: Mapping[str, Any],
                  roots: Mapping[str, str], store: str, components_path: str, sparse_json: str,
                  out_csv: str, out_pngs: list[str]) -> pd.DataFrame:
    """The top ``cfg.images`` images of each chosen neuron (``cfg.neurons``, or the
    ``cfg.auto`` strongest by mean top-k norm: for a CLIP ResNet channel, its strongest pair's),
    from the components' store.  CLIP ResNets: a row for the neuron -- all its pairs summed,
    images by centred norm (:func:`~.analysis.channel_norms`) -- then one per pair of its
    ``cfg.pairs`` strongest heads, images by activation along the pair's component; ViT
    neurons: one row per variant (exact, published), by activation.  One figure per neuron
    (``out_pngs``, in order) and one table (neuron, row, unit, rank, image = row of the split,
    value, texts)."""
    from ...core.settings import NeuronRetrieval
    from .analysis import channel_norms
    from .figures import plot_retrieval

    cfg = NeuronRetrieval.from_dict(cfg)
    comps, prov = read_components(components_path, spec)
    names = unit_names(prov)
    texts = {v: dict(zip(names, _read_sparse(sparse_json, spec, v, names))) for v in comps}
    model = load_model(spec, **load)
    strength = {v: c["top_norms"].mean(1) for v, c in comps.items()}
    if prov["units"] == "pairs":
        heads, channels = prov["unit_shape"]
        per_pair = strength["pairs"].reshape(heads, channels)
        neuron_strength, width = per_pair.max(0), channels
    else:
        neuron_strength, width = strength["exact"], prov["unit_shape"][0]
    chosen = list(cfg.neurons) or [int(i) for i in _top(neuron_strength, cfg.auto)]
    bad = [c for c in chosen if c >= width]
    if bad:
        raise ValueError(f"neurons.retrieval.neurons {bad} do not exist: {spec} has {width} "
                         f"{'channels' if prov['units'] == 'pairs' else 'neurons'} here")
    if len(out_pngs) != len(chosen):
        raise ValueError(f"{len(chosen)} neurons chosen but {len(out_pngs)} figures to write")
    rows, grids = [], {c: [] for c in chosen}
    with RowCache(store, KIND, {"model": spec}) as cache:
        n = len(cache)
        view = store_view(cache.provenance, n, roots)
        split_rows = getattr(view, "index", np.arange(n))
        if prov["units"] == "pairs":
            u = pair_directions(model.tower.attention_pool()).double().cpu().numpy()
            s_mean = pair_scalar_means(comps["pairs"]["mean"], u)
            norms = channel_norms(store_blocks(cache, "scalars"), u, s_mean, chosen)
            shown = {c: [int(h) for h in _top(per_pair[:, c], cfg.pairs or heads)] for c in chosen}
            units = sorted({h * channels + c for c in chosen for h in shown[c]})
            acts = dict(zip(units, _activations(cache, model, comps, prov, units).T))
            for j, c in enumerate(chosen):
                grids[c].append((f"neuron {c}: all {heads} heads (centred norm)", norms[:, j]))
                for h in shown[c]:
                    name = names[h * channels + c]
                    words = ", ".join(texts["pairs"][name]["texts"][:3])
                    grids[c].append((f"pair {name}: {words}", acts[h * channels + c]))
        else:
            for v in comps:
                a = _activations(cache, model, comps, prov, chosen, v)
                for j, c in enumerate(chosen):
                    words = ", ".join(texts[v][names[c]]["texts"][:3])
                    grids[c].append((f"{names[c]} {v}: {words}", a[:, j]))
        for rank, (c, path) in enumerate(zip(chosen, out_pngs), 1):
            panels = []
            for label, values in grids[c]:
                top = _top(values, min(cfg.images, n))
                panels.append((label, [np.asarray(view.image(int(i))) for i in top],
                               values[top]))
                rows += [{"neuron": c, "row": label, "rank": r, "image": int(split_rows[i]),
                          "value": float(values[i])} for r, i in enumerate(top, 1)]
            plot_retrieval(panels, path, f"{spec}: neuron {c} (rank {rank} of the chosen), top "
                                         f"{len(top)} of {n} images of {prov['dataset']}/"
                                         f"{prov['split']}")
    table = pd.DataFrame(rows, columns=["neuron", "row", "rank", "image", "value"])
    write_table(out_csv, table)
    log.info("%s: top images of neurons %s (%d rows)", spec, chosen,
             sum(len(g) for g in grids.values()))
    return table


def run_segmentation(*, spec: str, load: Mapping[str, Any], cfg: Mapping[str, Any],
                     roots: Mapping[str, str], components_path: str, out_csv: str,
                     out_png: str) -> pd.DataFrame:
    """Zero-shot segmentation from pairs (:mod:`.spatial`) on ``cfg.images`` images of
    ``cfg.task``'s split (spread over it), with the class maps of the ``cfg.pairs_per_class``
    pairs whose component best matches each class text ("matched pairs") and of every pair
    ("all pairs").  A dataset with object masks (the toy world): the map of each image's
    predicted class, thresholded at its mean, scored against the mask
    (:func:`~cliplens.core.segmentation.segmentation_scores`) beside a centre prior.  A dataset
    with class masks (PASCAL Context-59): each pixel takes the class of largest map, scored by
    :func:`~cliplens.core.segmentation.class_scores`.  Writes the scores and a figure of the
    first ``cfg.show`` images."""
    import torch

    from ...core.segmentation import (align_image, align_labels, align_mask, centre_prior,
                                      class_scores, segmentation_scores, upsample)
    from ...core.settings import NeuronSegmentation
    from ...core.text.zeroshot import class_direction, task_classifier
    from .figures import plot_segmentation
    from .spatial import class_maps, grid, matched_gains

    cfg = NeuronSegmentation.from_dict(cfg)
    comps, prov = read_components(components_path, spec)
    if prov["units"] != "pairs":
        raise ValueError(f"{spec}: segmentation from pairs needs a CLIP ResNet; its units are "
                         f"{prov['units']}")
    model = load_model(spec, **load)
    W, ds, classnames = task_classifier(model, cfg.task, roots)
    if hasattr(ds, "class_mask"):
        by_class = True
    elif hasattr(ds, "mask"):
        by_class = False
    else:
        raise ValueError(f"{cfg.task}: {ds.name}/{ds.split} has neither object masks (the toy "
                         "world) nor class masks (pascal-context) to score against")
    view = store_images(ds, cfg.images)
    tower = model.tower
    u = pair_directions(tower.attention_pool()).double().cpu().numpy()
    s_mean = pair_scalar_means(comps["pairs"]["mean"], u)
    e = class_direction(W, np.arange(W.shape[1]))
    gains = {"matched pairs": matched_gains(u, s_mean, e, cfg.pairs_per_class),
             "all pairs": matched_gains(u, s_mean, e, None)}
    gains_t = {k: torch.as_tensor(g, device=model.device) for k, g in gains.items()}
    maps: dict[str, list[np.ndarray]] = {k: [] for k in gains}
    truth, show = [], {"image": [], "class": []}
    size = None
    with torch.inference_mode():
        for a in range(0, len(view), cfg.batch_size):
            b = min(len(view), a + cfg.batch_size)
            images = view.images(a, b)
            px = model.preprocess(images).to(model.device)
            size = px.shape[-1]
            fmap = tower.pooling_input(px)                 # one trunk pass for both
            tokens, attention = tower.pool_attention(fmap)
            pred = np.argmax(tower.pool(fmap).double().cpu().numpy() @ W, 1)
            if a == 0 and tokens.shape[1] == 2:
                log.warning("%s: its feature map is 1 x 1 at %d px, so every map is constant "
                            "and the scores below say nothing about localisation", spec, size)
            for k, g in gains_t.items():
                m = grid(class_maps(tokens.double(), attention.double(), g).cpu().numpy())
                if by_class:          # [B, K, g, g] -> each pixel's class of largest map
                    up = upsample(m.reshape(-1, *m.shape[2:]), size).reshape(*m.shape[:2],
                                                                             size, size)
                    maps[k].append(up.argmax(1))
                else:                 # the predicted class's map
                    maps[k].append(upsample(m[np.arange(len(pred)), pred], size))
            truth += [align_labels(view.class_mask(i), size) if by_class
                      else align_mask(view.mask(i), size) for i in range(a, b)]
            k_show = max(0, min(b, cfg.show) - a)
            show["image"] += [align_image(im, size) for im in images[:k_show]]
            show["class"] += [classnames[j] for j in pred[:k_show]]
    maps = {k: np.concatenate(v) for k, v in maps.items()}
    if by_class:
        rows = [{"method": k, **class_scores(m, truth, len(classnames))} for k, m in maps.items()]
    else:
        prior = np.broadcast_to(centre_prior(size), (len(truth), size, size))
        rows = [{"method": k, **segmentation_scores(m, truth)} for k, m in maps.items()]
        rows.append({"method": "centre prior", **segmentation_scores(prior, truth)})
    table = pd.DataFrame(rows).assign(task=cfg.task, pairs_per_class=cfg.pairs_per_class,
                                      pairs=int(np.prod(prov["unit_shape"])))
    write_table(out_csv, table)
    k_show = len(show["image"])
    show["mask"] = truth[:k_show]
    plot_segmentation(show, {k: m[:k_show] for k, m in maps.items()}, table, out_png,
                      f"{spec}: segmentation from pairs, {cfg.task}, {len(truth)} images",
                      labels=by_class)
    log.info("%s on %s: %s", spec, cfg.task, "; ".join(
        f"{r['method']} mIoU {r['miou']:.3f}" for r in rows))
    return table


def _years(view, years: list[int] | None) -> tuple[np.ndarray, str]:
    """Each image's year [N] and what it is: toy-shift's ``year`` label mapped to
    ``toy.shift.years``, or the model year that ends a class name (Stanford Cars)."""
    fl = getattr(view, "factor_labels", None)
    if fl is not None and "year" in fl:
        idx = np.asarray(fl["year"], dtype=np.int64)
        return (np.asarray(years)[idx] if years else idx), "year"
    names = view.classnames or []
    last = [n.split()[-1] if n else "" for n in names]
    if view.labels is None or not names or not all(w.isdigit() and len(w) == 4 for w in last):
        raise ValueError(f"{view.name}/{view.split} has no years: concept tracking needs "
                         "toy-shift (a year label) or class names ending in a model year "
                         "(Stanford Cars)")
    return np.asarray([int(last[k]) for k in view.labels]), "model year"


def run_shift(*, spec: str, load: Mapping[str, Any], cfg: Mapping[str, Any],
              roots: Mapping[str, str], store: str, components_path: str, sparse_json: str,
              years: list[int] | None, out_csv: str, out_png: str) -> pd.DataFrame:
    """Concept tracking: the units whose first ``cfg.texts`` sparse texts name a word of
    ``cfg.concept`` (:func:`~.analysis.naming_units`, each signed by its text's weight), their
    mean activation along their components per image of the shift store, averaged per year
    (mean with a 95 % t interval), against the year and -- where the dataset has the label --
    the share of images whose ``cfg.truth`` factor has that value.  Pearson correlations with
    Fisher 95 % intervals (scipy) over years, and over images with the truth label."""
    from scipy import stats as st

    from ...core.settings import NeuronShift
    from ...core.stats import mean_ci
    from ...core.toy.world import FACTORS
    from .analysis import naming_units
    from .figures import plot_shift

    cfg = NeuronShift.from_dict(cfg)
    comps, prov = read_components(components_path, spec)
    variant, names = _variant(prov), unit_names(prov)
    decs = _read_sparse(sparse_json, spec, variant, names)
    chosen = naming_units(decs, cfg.concept, cfg.texts)
    model = load_model(spec, **load)
    with RowCache(store, KIND, {"model": spec}) as cache:
        n = len(cache)
        view = store_view(cache.provenance, n, roots)
        if chosen:
            sign = np.array([s for _, s in chosen])
            act = (_activations(cache, model, comps, prov, [i for i, _ in chosen]) * sign).mean(1)
        else:
            log.warning("%s: no unit's first %d sparse texts name %s: nothing to track", spec,
                        cfg.texts, list(cfg.concept))
            act = np.full(n, np.nan)
    year, what = _years(view, years)
    truth = None
    if cfg.truth is not None and hasattr(view, "factor_labels"):
        labels = view.factor_labels[cfg.truth["factor"]]
        truth = (np.asarray(labels) == FACTORS[cfg.truth["factor"]].index(cfg.truth["value"]))
    rows = []
    for y in np.unique(year):
        sel = year == y
        ci = mean_ci(act[sel])
        rows.append({"year": int(y), "images": int(sel.sum()), "activation": ci["mean"],
                     "ci_low": ci["ci_low"], "ci_high": ci["ci_high"],
                     "true_share": float(truth[sel].mean()) if truth is not None else np.nan})
    table = pd.DataFrame(rows)

    def corr(x, y):
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 4 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
            return {"r": np.nan, "r_low": np.nan, "r_high": np.nan, "n": int(ok.sum())}
        res = st.pearsonr(x[ok], y[ok])
        lo, hi = res.confidence_interval(0.95)
        return {"r": float(res.statistic), "r_low": float(lo), "r_high": float(hi),
                "n": int(ok.sum())}

    summary = {"units": [names[i] for i, _ in chosen], "signs": [s for _, s in chosen],
               "vs_year": corr(table["year"].to_numpy(float), table["activation"].to_numpy())}
    if truth is not None:
        summary["vs_true_share"] = corr(table["true_share"].to_numpy(),
                                        table["activation"].to_numpy())
        summary["per_image_vs_truth"] = corr(truth.astype(float), act)
    table = table.assign(units=len(chosen), concept="|".join(cfg.concept),
                         r_year=summary["vs_year"]["r"],
                         r_truth=summary.get("vs_true_share", {}).get("r", np.nan),
                         r_truth_low=summary.get("vs_true_share", {}).get("r_low", np.nan),
                         r_truth_high=summary.get("vs_true_share", {}).get("r_high", np.nan),
                         r_image_truth=summary.get("per_image_vs_truth", {}).get("r", np.nan))
    write_table(out_csv, table)
    plot_shift(table, out_png, f"{spec}: units naming {'/'.join(cfg.concept)} "
                               f"({len(chosen)}) on {_where(view)}, per {what}", summary)
    log.info("%s: %d units name %s; correlation with the year %s, with the true share %s",
             spec, len(chosen), list(cfg.concept), summary["vs_year"],
             summary.get("vs_true_share"))
    return table


def run_evidence(*, spec: str, load: Mapping[str, Any], cfg: Mapping[str, Any],
                 roots: Mapping[str, str], store: str, components_path: str, sparse_json: str,
                 out_csv: str, out_json: str, out_png: str) -> dict:
    """Toy world: for each unit, the factor its first ``cfg.texts`` sparse texts name
    (:func:`~cliplens.core.factors.named_factor`, weighted by |weight|) and the factor that
    explains most of its activation along its component (held-out R^2,
    :func:`~cliplens.core.factors.variance_shares`: even store rows fitted, odd rows scored);
    the agreement rate over the units whose texts name a factor, against chance -- the rate
    two independent draws with the same marginals would reach, ``sum_f p_named(f) p_probe(f)``
    -- with the one-sided binomial p-value of agreeing that often by chance (scipy), for all
    of them, for those whose best R^2 reaches ``cfg.min_r2`` and for the strongest tenth."""
    from ...core.factors import named_factor, variance_shares
    from ...core.settings import NeuronEvidence
    from ...core.text.textsets import text_factors
    from ...core.toy.world import FACTORS
    from .figures import plot_evidence

    cfg = NeuronEvidence.from_dict(cfg)
    comps, prov = read_components(components_path, spec)
    variant, names = _variant(prov), unit_names(prov)
    decs = _read_sparse(sparse_json, spec, variant, names)
    model = load_model(spec, **load)
    with RowCache(store, KIND, {"model": spec}) as cache:
        n = len(cache)
        view = store_view(cache.provenance, n, roots)
        if not hasattr(view, "factor_labels"):
            raise ValueError(f"{_where(view)} has no factor labels: the evidence table needs "
                             "the toy world (neurons.dataset: toy)")
        act = _activations(cache, model, comps, prov, list(range(len(names))))
    factors = [f for f in FACTORS if f in view.factor_labels]
    fit, test = np.arange(0, n, 2), np.arange(1, n, 2)
    y_fit = {f: np.asarray(view.factor_labels[f])[fit] for f in factors}
    y_test = {f: np.asarray(view.factor_labels[f])[test] for f in factors}
    strength = comps[variant]["top_norms"].mean(1)
    rows = []
    for i, (name, dec) in enumerate(zip(names, decs)):
        shares = variance_shares(act[fit, i:i + 1], y_fit, act[test, i:i + 1], y_test)
        best = max(shares, key=lambda f: shares[f])
        order = np.argsort(-np.abs(dec["weights"]), kind="stable")
        texts = [dec["texts"][j] for j in order]
        named = named_factor(texts, text_factors, cfg.texts,
                             [abs(dec["weights"][j]) for j in order])
        rows.append({"unit": name, "strength": float(strength[i]), "text_factor": named,
                     "probe_factor": best, "probe_r2": shares[best],
                     "agree": named == best, "texts": " | ".join(texts[:cfg.texts]),
                     **{f"r2_{f}": shares[f] for f in factors}})
    table = pd.DataFrame(rows)
    write_table(out_csv, table)

    def rate(t):
        from scipy.stats import binomtest

        t = t[t["text_factor"].notna()]
        if not len(t):
            return {"units": 0, "agree": 0, "rate": np.nan, "chance": np.nan, "p": np.nan}
        pn = t["text_factor"].value_counts(normalize=True)
        pp = t["probe_factor"].value_counts(normalize=True)
        chance = float(sum(pn.get(f, 0) * pp.get(f, 0) for f in factors))
        agree = int(t["agree"].sum())
        p = binomtest(agree, len(t), min(max(chance, 0.0), 1.0), alternative="greater").pvalue
        return {"units": len(t), "agree": agree, "rate": agree / len(t), "chance": chance,
                "p": float(p)}

    summary = {"model": spec, "units": len(table), "variant": variant, "factors": factors,
               "texts": cfg.texts, "named": int(table["text_factor"].notna().sum()),
               "all": rate(table), "min_r2": cfg.min_r2,
               "informative": rate(table[table["probe_r2"] >= cfg.min_r2]),
               "top_tenth": rate(table[strength >= np.percentile(strength, 90)])}
    write_json_atomic(out_json, summary)
    a = summary["all"]
    plot_evidence(table, factors, out_png,
                  f"{spec}: factor named by each unit's first {cfg.texts} sparse texts (rows) vs "
                  f"factor explaining most of its activation (columns); agreement {a['agree']}/"
                  f"{a['units']} = {a['rate']:.2f}, chance {a['chance']:.2f}")
    log.info("%s: agreement %s; informative (R² >= %.2f) %s", spec, a, cfg.min_r2,
             summary["informative"])
    return summary
