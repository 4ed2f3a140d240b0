"""Patch tokens of one layer for one shard (a contiguous row range) of a dataset view."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.inversion.jobs import run_token_shard

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_token_shard(**snakemake.params, load=model_load(snakemake.config), out=snakemake.output[0])
