"""Per unit: mean, top-k images and norms, first component, out of core from the store."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.neurons.jobs import run_components

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_components(**snakemake.params, load=model_load(snakemake.config),
                   store=snakemake.input.store, out=snakemake.output[0])
