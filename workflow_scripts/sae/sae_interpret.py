"""Describe one SAE's features (offline baseline or an OpenAI-compatible endpoint) and score
the descriptions; answers are kept in a journal beside the SAE, so a rerun asks only what is
missing."""

from pathlib import Path

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.sae.interpret_jobs import run_interpret

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_interpret(**snakemake.params, load=model_load(snakemake.config),
                  sae_dir=str(Path(snakemake.input.sae).parent), cache=snakemake.input.cache,
                  features_csv=snakemake.input.features, collage_dir=snakemake.input.collages,
                  out_csv=snakemake.output.csv, out_json=snakemake.output.json)
