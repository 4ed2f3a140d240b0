"""Zero-shot accuracy of one model on one task, from the cached image embeddings."""

from cliplens.core.jobs import model_load, run_zeroshot_eval
from cliplens.core.runlog import job_log

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_zeroshot_eval(**snakemake.params, load=model_load(snakemake.config),
                      cache=snakemake.input.cache, out=snakemake.output[0])
