"""Purity of one model's image and text projection weights."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.purity.jobs import run_purity_weights

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_purity_weights(**snakemake.params, load=model_load(snakemake.config),
                       out_json=snakemake.output.json, out_npz=snakemake.output.npz)
