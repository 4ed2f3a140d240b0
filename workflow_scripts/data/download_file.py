"""Download one catalog file: resumable, checked against size and SHA-256/MD5, renamed atomically."""

from cliplens.core.jobs import run_download
from cliplens.core.runlog import job_log

with job_log(snakemake.log[0]):
    run_download(**snakemake.params, out=snakemake.output[0])
