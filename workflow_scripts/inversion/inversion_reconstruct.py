"""Reconstruct the held-out images from one extractor's tokens."""

import os

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.inversion.jobs import run_heldout

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_heldout(**snakemake.params, load=model_load(snakemake.config),
                recon_dir=os.path.dirname(snakemake.input.weights),
                out=snakemake.output[0])
