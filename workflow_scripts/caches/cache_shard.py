"""Embed one shard (a contiguous row range) of a dataset split into an HDF5 cache."""

from cliplens.core.jobs import run_cache_shard
from cliplens.core.runlog import job_log

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_cache_shard(**snakemake.params, out=snakemake.output[0])
