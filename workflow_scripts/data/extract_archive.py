"""Extract one downloaded archive into its dataset folder (marker written last)."""

from cliplens.core.jobs import run_extract_archive
from cliplens.core.runlog import job_log

with job_log(snakemake.log[0]):
    run_extract_archive(**snakemake.params, archive=snakemake.input[0], out=snakemake.output[0])
