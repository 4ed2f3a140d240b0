"""Check a manually placed dataset; fail with the catalog's instructions when it is incomplete."""

from cliplens.core.jobs import run_check_manual
from cliplens.core.runlog import job_log

with job_log(snakemake.log[0]):
    run_check_manual(**snakemake.params)
