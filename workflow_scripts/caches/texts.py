"""Embed text sets (pooled, duplicates dropped) with one model: the texts a study explains with."""

from cliplens.core.jobs import model_load, run_texts
from cliplens.core.runlog import job_log

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_texts(**snakemake.params, load=model_load(snakemake.config), out=snakemake.output[0])
