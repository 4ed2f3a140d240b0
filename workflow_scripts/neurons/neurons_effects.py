"""Zero-shot accuracy with every unit replaced (component, n texts) or the weak ones ablated."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.neurons.jobs import run_effects

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_effects(**snakemake.params, load=model_load(snakemake.config), store=snakemake.input.store,
                components_path=snakemake.input.components, texts=snakemake.input.texts,
                out_csv=snakemake.output.csv, out_png=snakemake.output.png)
