"""Similarity tables: per image, mean with 95 % t-CI per (scorer, variant, extractor), and the
paired SigLIP2 - SigLIP differences at equal resolution."""

from cliplens.core.runlog import job_log
from cliplens.studies.inversion.jobs import run_similarity_table

with job_log(snakemake.log[0]):
    out = snakemake.output
    run_similarity_table(**snakemake.params, scores=list(snakemake.input), summary=out.summary,
                         per_image=out.per_image, diff=out.diff)
