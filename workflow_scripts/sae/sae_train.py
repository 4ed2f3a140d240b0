"""Train one SAE of sae.saes on the embeddings of its dataset's fit split."""

from pathlib import Path

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.sae.jobs import run_train_sae

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_train_sae(**snakemake.params, cache=snakemake.input.cache,
                  out_dir=str(Path(snakemake.output.meta).parent),
                  device=model_load(snakemake.config)["device"])
