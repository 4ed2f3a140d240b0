"""Per feature of one SAE: firing rate, top images, collages, histograms, purity."""

from pathlib import Path

from cliplens.core.runlog import job_log
from cliplens.studies.sae.jobs import run_sae_features

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_sae_features(**snakemake.params, sae_dir=str(Path(snakemake.input.sae).parent),
                     cache=snakemake.input.cache, out_csv=snakemake.output.csv,
                     out_json=snakemake.output.json, out_collages=snakemake.output.collages,
                     out_histograms=snakemake.output.histograms,
                     out_collage_dir=snakemake.output.describe)
