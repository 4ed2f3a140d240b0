"""Heatmap of zero-shot top-1 accuracy per model x task, from the zero-shot table."""

import pandas as pd

from cliplens.plots import zeroshot_figure
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    table = pd.read_csv(snakemake.input[0])
    zeroshot_figure(table, snakemake.output[0], title=snakemake.params.title)
    log.info("wrote %s (%d models x %d tasks)", snakemake.output[0], table["model"].nunique(),
             table["task"].nunique())
