"""Collect per-(model, task) zero-shot results into one CSV table."""

import json

import pandas as pd

from cliplens.io import atomic_path
from cliplens.runlog import job_log

COLUMNS = ["model", "task", "top1", "top5", "mean_per_class", "n", "classes"]

with job_log(snakemake.log[0]) as log:
    rows = [json.loads(open(path).read()) for path in snakemake.input]
    table = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in rows], columns=COLUMNS)
    with atomic_path(snakemake.output[0]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    log.info("zero-shot table: %d rows\n%s", len(table), table.to_string(index=False))
