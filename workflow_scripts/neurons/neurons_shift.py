"""Concept tracking: the activation of the units naming a concept, per year."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.neurons.responses import run_shift

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_shift(**snakemake.params, load=model_load(snakemake.config), store=snakemake.input.store,
              components_path=snakemake.input.components, sparse_json=snakemake.input.sparse,
              out_csv=snakemake.output.csv, out_png=snakemake.output.png)
