"""Every SAE and task in one table, and the L0 figure."""

from cliplens.core.runlog import job_log
from cliplens.studies.sae.jobs import run_sae_table

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_sae_table(**snakemake.params, results=list(snakemake.input), out_csv=snakemake.output.csv,
                  out_png=snakemake.output.png)
