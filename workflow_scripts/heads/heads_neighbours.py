"""Nearest-neighbour images by one head's direct effect."""

from cliplens.core.runlog import job_log
from cliplens.studies.heads.jobs import run_neighbours

with job_log(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    run_neighbours(**snakemake.params, fit=i.fit, textspan=i.textspan, out_png=o.png,
                   out_csv=o.csv)
