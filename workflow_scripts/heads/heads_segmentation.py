"""Zero-shot segmentation against object masks, and the spatial-map figure."""

from cliplens.core.runlog import job_log
from cliplens.studies.heads.jobs import run_segmentation

with job_log(snakemake.log[0], threads=snakemake.threads):
    i, o = snakemake.input, snakemake.output
    run_segmentation(**snakemake.params, texts=i.texts, textspan=i.textspan, out_csv=o.csv,
                     out_png=o.png, out_maps=o.maps)
