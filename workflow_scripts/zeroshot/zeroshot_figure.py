"""Heatmap of zero-shot top-1 accuracy per model x task, from the zero-shot table."""

from cliplens.core.jobs import run_zeroshot_figure
from cliplens.core.runlog import job_log

with job_log(snakemake.log[0]):
    run_zeroshot_figure(**snakemake.params, table=snakemake.input[0], out=snakemake.output[0])
