"""One misalignment fraction and seed: captions swapped, projections fine-tuned, then scored."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.purity.misalign_jobs import run_purity_finetune

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_purity_finetune(**snakemake.params, load=model_load(snakemake.config),
                        features=snakemake.input.features, out_json=snakemake.output[0])
