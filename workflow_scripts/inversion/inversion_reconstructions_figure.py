"""reconstructions.png: held-out images beside their reconstruction from every extractor."""

from cliplens.core.runlog import job_log
from cliplens.studies.inversion.jobs import run_reconstructions_figure

with job_log(snakemake.log[0]):
    run_reconstructions_figure(**snakemake.params, heldout=list(snakemake.input.heldout),
                               out=snakemake.output.png, arrays=snakemake.output.arrays)
