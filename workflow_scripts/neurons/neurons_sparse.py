"""Each unit's component as k texts; the strongest units with their texts."""

from cliplens.core.runlog import job_log
from cliplens.studies.neurons.jobs import run_sparse

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_sparse(**snakemake.params, components_path=snakemake.input.components,
               texts=snakemake.input.texts, out_json=snakemake.output.json,
               out_txt=snakemake.output.txt, out_csv=snakemake.output.csv)
