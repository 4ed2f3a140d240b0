"""Embed one shard (a contiguous row range) of a dataset split into an HDF5 cache."""

from cliplens.core.jobs import model_load, run_cache_shard
from cliplens.core.runlog import job_log

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_cache_shard(**snakemake.params, load=model_load(snakemake.config), out=snakemake.output[0])
