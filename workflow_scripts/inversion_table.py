"""Similarity tables: per image, mean with 95 % t-CI per (scorer, variant, extractor), and the
paired SigLIP2 - SigLIP differences at equal resolution."""

import pandas as pd

from cliplens.inversion import summarise_similarity
from cliplens.io import atomic_path
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    per_image = pd.concat([pd.read_csv(f) for f in snakemake.input], ignore_index=True)
    order = {s: i for i, s in enumerate(snakemake.params.extractors)}
    per_image = per_image.sort_values(
        ["scorer", "variant", "extractor", "image"],
        key=lambda c: c.map(order) if c.name == "extractor" else c, kind="stable")
    cols = per_image[["extractor", "group", "resolution"]].drop_duplicates()
    info = {s: {"group": g, "resolution": r} for s, g, r in cols.itertuples(index=False)}
    info = {s: info[s] for s in snakemake.params.extractors if s in info}
    summary, diff = summarise_similarity(per_image.to_dict("records"), info)
    for df, path in ((summary, snakemake.output.summary), (per_image, snakemake.output.per_image),
                     (diff, snakemake.output.diff)):
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
    log.info("summary:\n%s\npaired differences:\n%s", summary.to_string(), diff.to_string())
