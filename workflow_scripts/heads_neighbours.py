"""Nearest-neighbour images by one head's direct effect."""

from cliplens.head_jobs import run_neighbours
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    heads = run_neighbours(p.spec, snakemake.input.fit, snakemake.input.textspan, p.roots, p.cfg,
                           snakemake.output[0])
    log.info("%s: neighbours of heads %s", p.spec, heads)
