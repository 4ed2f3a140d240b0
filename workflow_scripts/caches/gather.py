"""Join the shards of one row cache (embeddings, tokens, decomposition) into one file of HDF5
virtual datasets."""

from cliplens.core.jobs import run_gather
from cliplens.core.runlog import job_log

with job_log(snakemake.log[0]):
    run_gather(shards=list(snakemake.input), out=snakemake.output[0])
