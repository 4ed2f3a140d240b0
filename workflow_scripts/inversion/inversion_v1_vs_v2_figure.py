"""v1_vs_v2.png: similarity against input resolution, SigLIP vs SigLIP2, one panel per scorer."""

from cliplens.core.runlog import job_log
from cliplens.studies.inversion.jobs import run_v1_vs_v2_figure

with job_log(snakemake.log[0]):
    run_v1_vs_v2_figure(**snakemake.params, table=snakemake.input[0], out=snakemake.output[0])
