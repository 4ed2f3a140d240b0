"""Draw one toy dataset (all its splits) and write it as HDF5."""

from cliplens.core.jobs import run_toy_world
from cliplens.core.runlog import job_log

with job_log(snakemake.log[0]):
    run_toy_world(**snakemake.params, out=snakemake.output[0])
