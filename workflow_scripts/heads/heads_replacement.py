"""Accuracy with every explained head replaced by its TextSpan reconstruction."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.heads.jobs import run_replacement

with job_log(snakemake.log[0], threads=snakemake.threads):
    p = dict(snakemake.params)
    p["load"] = model_load(snakemake.config)
    caches = {t: snakemake.input[t] for t in p.pop("tasks")}
    run_replacement(**p, textspan=snakemake.input.textspan, caches=caches, out=snakemake.output[0])
