"""What enters one model's projections: training images and captions, task images."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.purity.misalign_jobs import run_purity_features

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_purity_features(**snakemake.params, load=model_load(snakemake.config),
                        out_npz=snakemake.output[0])
