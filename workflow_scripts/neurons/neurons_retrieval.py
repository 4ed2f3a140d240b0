"""The top images of the chosen neurons and of their pairs (or variants), a grid each."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.neurons.responses import run_retrieval

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_retrieval(**snakemake.params, load=model_load(snakemake.config),
                  store=snakemake.input.store, components_path=snakemake.input.components,
                  sparse_json=snakemake.input.sparse, out_csv=snakemake.output.csv,
                  out_pngs=list(snakemake.output.pngs))
