"""Toy world: the factor each unit's texts name against the factor its activation follows."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.neurons.responses import run_evidence

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_evidence(**snakemake.params, load=model_load(snakemake.config),
                 store=snakemake.input.store, components_path=snakemake.input.components,
                 sparse_json=snakemake.input.sparse, out_csv=snakemake.output.csv,
                 out_json=snakemake.output.json, out_png=snakemake.output.png)
