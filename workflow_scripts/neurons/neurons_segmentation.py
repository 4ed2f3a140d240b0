"""Zero-shot segmentation from the pairs whose components match each class text."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.neurons.responses import run_segmentation

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_segmentation(**snakemake.params, load=model_load(snakemake.config),
                     components_path=snakemake.input.components,
                     out_csv=snakemake.output.csv, out_png=snakemake.output.png)
