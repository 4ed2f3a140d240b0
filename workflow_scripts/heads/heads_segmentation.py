"""Zero-shot segmentation against object masks, and the spatial-map figure."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.heads.jobs import run_segmentation

with job_log(snakemake.log[0], threads=snakemake.threads):
    i, o = snakemake.input, snakemake.output
    p = dict(snakemake.params)
    p.pop("maps_layers")  # for the report's caption only
    run_segmentation(**p, load=model_load(snakemake.config), texts=i.texts,
                     textspan=i.textspan, out_csv=o.csv, out_png=o.png, out_maps=o.maps)
