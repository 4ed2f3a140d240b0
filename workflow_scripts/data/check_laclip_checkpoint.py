"""Check a hand-placed LaCLIP checkpoint; fail saying where to get it and where to put it."""

from cliplens.core.jobs import model_load, run_check_checkpoint
from cliplens.core.runlog import job_log

with job_log(snakemake.log[0]):
    run_check_checkpoint(**snakemake.params, load=model_load(snakemake.config),
                         out=snakemake.output[0])
