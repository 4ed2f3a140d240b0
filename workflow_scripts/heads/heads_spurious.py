"""Worst-group accuracy before and after mean-ablating the heads that carry a spurious cue."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.heads.jobs import run_spurious

with job_log(snakemake.log[0], threads=snakemake.threads):
    i, o = snakemake.input, snakemake.output
    run_spurious(**snakemake.params, load=model_load(snakemake.config),
                 fit=i.fit, eval=i["eval"], out_csv=o.csv, out_json=o.json,
                 out_png=o.png)
