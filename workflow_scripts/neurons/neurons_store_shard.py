"""One shard of a study 003 store: pair scalars or both neuron variants, image by image."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.neurons.jobs import run_extract_shard

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_extract_shard(**snakemake.params, load=model_load(snakemake.config),
                      out=snakemake.output[0])
