"""Zero-shot accuracy and silhouette of one model on one task, whole and pruned by purity."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.purity.jobs import run_purity_eval

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_purity_eval(**snakemake.params, load=model_load(snakemake.config),
                    cache=snakemake.input.cache, scores=snakemake.input.scores,
                    out_csv=snakemake.output[0])
