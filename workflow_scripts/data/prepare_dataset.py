"""Finish a downloaded dataset: nested archives, cleanup, layout check, the .ready marker."""

from cliplens.core.jobs import run_finish_dataset
from cliplens.core.runlog import job_log

with job_log(snakemake.log[0]):
    run_finish_dataset(**snakemake.params, out=snakemake.output[0])
