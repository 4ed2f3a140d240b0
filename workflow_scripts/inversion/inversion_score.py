"""Per-image similarity of originals and reconstructions under one scorer."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.inversion.jobs import run_scoring

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_scoring(**snakemake.params, load=model_load(snakemake.config),
                heldout=list(snakemake.input.heldout),
                out=snakemake.output[0])
