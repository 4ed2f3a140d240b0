"""An SAE's metrics and CLIP vs CLIP+SAE zero-shot accuracy on one task."""

from pathlib import Path

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.sae.jobs import run_evaluate_sae

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_evaluate_sae(**snakemake.params, load=model_load(snakemake.config),
                     sae_dir=str(Path(snakemake.input.sae).parent), cache=snakemake.input.cache,
                     out=snakemake.output[0])
