"""Fit the colour operators on train token pairs and evaluate them on held-out images."""

import os

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.inversion.jobs import run_operators

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_operators(**snakemake.params, load=model_load(snakemake.config),
                  recon_dir=os.path.dirname(snakemake.input.weights),
                  table=snakemake.output.table, arrays=snakemake.output.arrays)
