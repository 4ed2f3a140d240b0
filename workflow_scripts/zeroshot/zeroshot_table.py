"""Collect per-(model, task) zero-shot results into one CSV table."""

from cliplens.core.jobs import run_zeroshot_table
from cliplens.core.runlog import job_log

with job_log(snakemake.log[0]):
    run_zeroshot_table(results=list(snakemake.input), out=snakemake.output[0])
