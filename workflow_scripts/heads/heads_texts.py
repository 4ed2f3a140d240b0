"""Embed the text sets that explain heads with the model being explained."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.heads.jobs import run_texts

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_texts(**snakemake.params, load=model_load(snakemake.config), out=snakemake.output[0])
