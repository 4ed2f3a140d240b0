"""Purity and accuracy against the misaligned fraction: table and figure."""

from cliplens.core.runlog import job_log
from cliplens.studies.purity.misalign_jobs import run_purity_misalign_table

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_purity_misalign_table(results=list(snakemake.input), out_csv=snakemake.output.csv,
                              out_png=snakemake.output.png)
