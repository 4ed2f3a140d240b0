"""Decompose one shard (a contiguous row range) of a dataset split into heads, MLPs and the rest."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.heads.jobs import run_decompose_shard

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_decompose_shard(**snakemake.params, load=model_load(snakemake.config),
                        out=snakemake.output[0])
