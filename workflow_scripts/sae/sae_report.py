"""The static HTML report of study 002: metrics, collages, descriptions and their scores."""

from cliplens.core.runlog import job_log
from cliplens.studies.sae.interpret_jobs import run_sae_report

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_sae_report(**snakemake.params, metrics_csv=list(snakemake.input.metrics),
                   out_html=snakemake.output[0])
