"""Study 002, part 2 jobs: describe an SAE's features in words (offline baseline or an
OpenAI-compatible endpoint), clean and score the descriptions, and gather everything into one
static HTML report.

The answers of :func:`run_interpret` land in an append-only journal beside the SAE
(``{sae_dir}/interpret/journal.jsonl``, not a Snakemake output, so a rerun keeps it); its keys
carry the SAE's weights digest, so a retrained SAE is described afresh.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...core.io import write_json_atomic, write_table, write_text_atomic
from ...core.models.storage import DIGESTS
from .jobs import WEIGHTS_FILE, load_sae, most_frequent, sae_inputs

log = logging.getLogger("cliplens")

BASELINE = "baseline:nearest-text"
JOURNAL = "interpret/journal.jsonl"


def described_features(features_csv: str, collage_dir: str) -> tuple[Any, list[int]]:
    """(the features table of :func:`~.jobs.run_sae_features`, the features that have a collage
    in ``collage_dir``, most frequent first)."""
    import pandas as pd

    table = pd.read_csv(features_csv, keep_default_na=False)
    have = {int(p.stem) for p in Path(collage_dir).glob("*.png") if p.stem.isdigit()}
    live = table["live"].astype(str).eq("True").to_numpy()
    order = most_frequent(table["firing_rate"].to_numpy(float), live, len(table))
    return table, [j for j in order if j in have]


def _baseline(model, sae, features, text_sets: Mapping[str, str], languages):
    """(ask, prompts): each feature labelled, in every language, with the text at the index of
    the English text nearest its decoder direction."""
    from ...core.text.textsets import embed_texts, load_text_set
    from .interpret import decoder_directions, nearest_texts

    texts = {lang: load_text_set(text_sets[lang]) for lang in {"en", *languages}}
    sizes = {lang: len(t) for lang, t in texts.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"sae.interpret.text_sets must be item for item translations; their "
                         f"sizes differ: {sizes}")
    idx, _ = nearest_texts(decoder_directions(sae)[features], embed_texts(model, texts["en"]))
    label = {j: int(i) for j, i in zip(features, idx[:, 0])}
    prompts = {lang: f"nearest text of {text_sets['en']} (as {text_sets[lang]})"
               for lang in languages}
    return (lambda req: texts[req["language"]][label[req["feature"]]]), prompts


def run_interpret(*, spec: str, load: Mapping[str, Any], sae_dir: str, cache: str,
                  features_csv: str, collage_dir: str, interpret: Mapping[str, Any],
                  out_csv: str, out_json: str, progress: bool = True) -> dict[str, Any]:
    """Describe each feature with a collage in ``collage_dir`` in every language of
    ``interpret`` (settings ``sae.interpret``), through the journal; then, per description:
    the cleaned text, quality flags, the feature it duplicates, the detection AUC of its CLIP
    text embedding (the feature's top images of ``features_csv`` against
    ``random_images`` random images of ``cache``) and, on the toy world, whether it names the
    factor value its top images share.  Table to ``out_csv``, statistics to ``out_json``.
    Raises when any description is still missing (a rerun asks only for those)."""
    import pandas as pd

    from ...core.models.registry import load_model
    from ...core.text.textsets import embed_texts
    from ...core.toy.russian import names_value
    from .endpoint import Asker, Endpoint, ask_all
    from .interpret import (clean, detection_auc, duplicates, language_stats, quality_flags,
                            random_negatives, requests_for)
    from .journal import Journal, row_key

    sae, meta = load_sae(sae_dir, spec=spec)
    x, prov = sae_inputs(cache, {"model": spec}, meta)
    start = int(prov.get("start", 0))
    table, features = described_features(features_csv, collage_dir)
    languages = list(interpret["languages"])
    model = load_model(spec, **load)
    extra = {"sae": meta[DIGESTS][WEIGHTS_FILE]}  # another SAE's feature j is another feature
    if interpret["interpreter"] == "baseline":
        ask, prompts = _baseline(model, sae, features, interpret["text_sets"], languages)
        name, asked_model, concurrency = BASELINE, spec, 1
        extra["text_sets"] = dict(interpret["text_sets"])
    else:
        endpoint = Endpoint(**interpret["endpoint"])
        prompts, name, asked_model = dict(interpret["prompts"]), endpoint.name, endpoint.model
        concurrency = endpoint.concurrency
        ask = None  # the client (and the key) only when something is left to ask

    requests = requests_for(features, languages, prompts, asked_model, name, extra)
    with Journal(Path(sae_dir) / JOURNAL) as journal:
        if ask is None and journal.missing(requests):
            asker = Asker(endpoint)

            def ask(req):
                png = (Path(collage_dir) / f"{req['feature']}.png").read_bytes()
                return asker(req["prompt"], png)

        counts = ask_all(requests, ask or (lambda req: None), journal, concurrency,
                         progress=progress)
        answers = [journal.rows.get(row_key(r)) for r in requests]
    missing = sum(a is None for a in answers)
    log.info("%s: %d descriptions asked, %d written, %d failed, %d from earlier runs", name,
             counts["asked"], counts["written"], counts["failed"],
             len(requests) - counts["asked"])
    if missing:
        raise RuntimeError(f"{missing} of {len(requests)} descriptions are missing (see the "
                           f"warnings above); rerun to ask only for those")

    by = table.set_index("feature")
    rows = []
    for a in answers:
        j, lang = a["feature"], a["language"]
        text = clean(a["text"], lang)
        r = {"feature": j, "language": lang, "interpreter": a["interpreter"],
             "model": a["model"], "firing_rate": float(by.at[j, "firing_rate"]), "raw": a["text"],
             "text": text, "flags": ";".join(quality_flags(text, lang, interpret["max_chars"])
                                             + (["cut"] if a.get("finish_reason") == "length"
                                                else []))}
        if "purity_of" in by.columns and by.at[j, "purity_of"]:
            factor, _, value = str(by.at[j, "purity_of"]).partition("=")
            r.update(purity=float(by.at[j, "purity"]), purity_of=by.at[j, "purity_of"],
                     names_value=names_value(text, factor, value, lang) if text else False)
        rows.append(r)
    columns = ["feature", "language", "interpreter", "model", "firing_rate", "raw", "text",
               "flags"]
    out = pd.DataFrame(rows, columns=list(dict.fromkeys([*columns, *(rows[0] if rows else [])])))
    out["duplicate_of"] = None
    for lang, t in out.groupby("language"):
        out.loc[t.index, "duplicate_of"] = pd.Series(duplicates(t["feature"], t["text"]),
                                                     index=t.index, dtype=object)
    texts = out["text"].tolist()
    emb = embed_texts(model, [t or " " for t in texts]) if texts else np.zeros((0, 0))
    auc = []
    for i, j in enumerate(out["feature"]):
        pos = [int(v) - start for v in str(by.at[j, "top_rows"]).split(";") if v]
        neg = random_negatives(len(x), pos, interpret["random_images"], seed=int(j))
        auc.append(detection_auc(emb[i], x, pos, neg) if texts[i] else np.nan)
    out["detection_auc"] = auc
    out["baseline"] = out["interpreter"].eq(BASELINE)
    write_table(out_csv, out)
    summary = {"model": spec, "sae": meta["settings"], "interpreter": name,
               "baseline": name == BASELINE, "features": len(features), "languages": languages,
               "stats": language_stats(out)}
    write_json_atomic(out_json, summary)
    for lang, s in summary["stats"].items():
        log.info("%s: %d descriptions, median detection AUC %s, names the shared factor value "
                 "%s", lang, s["descriptions"], s.get("auc_median"), s.get("names_value"))
    return summary


def run_sae_report(*, metrics_csv: Sequence[str], saes: Sequence[Mapping[str, str]],
                   out_html: str) -> None:
    """One static page: per SAE (``saes``: name, model, dataset, interpretations, summary,
    collages) its metrics rows of ``metrics_csv`` and each described feature's collage,
    descriptions, detection scores and firing rate."""
    import pandas as pd

    from .report import render_report

    metrics = pd.concat([pd.read_csv(p) for p in metrics_csv], ignore_index=True)
    root = Path(out_html).parent
    sections = []
    for s in saes:
        t = pd.read_csv(s["interpretations"], keep_default_na=False)
        summary = json.loads(Path(s["summary"]).read_text())
        collages = {int(j): os.path.relpath(Path(s["collages"]) / f"{j}.png", root)
                    for j in t["feature"].unique()}
        m = metrics[(metrics["sae"] == s["name"]) & (metrics["dataset"] == s["dataset"])]
        sections.append({**s, "table": t, "summary": summary, "collage_paths": collages,
                         "metrics": m})
    write_text_atomic(out_html, render_report(sections))
