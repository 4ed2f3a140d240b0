"""Train one toy model on the toy world's train split and save it in its library's format."""

from cliplens.core.jobs import run_train_toy_model
from cliplens.core.runlog import job_log

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_train_toy_model(**snakemake.params, device=snakemake.config["device"],
                        data=snakemake.input.data, out=snakemake.output[0])
