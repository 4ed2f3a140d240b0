"""Toy ground truth: the factor each head's TextSpan texts name vs the factor a probe finds."""

from cliplens.core.runlog import job_log
from cliplens.studies.heads.jobs import run_factors

with job_log(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    run_factors(**snakemake.params, fit=i.fit, test=i.test, textspan=i.textspan,
                out_csv=o.csv, out_json=o.json, out_png=o.png)
