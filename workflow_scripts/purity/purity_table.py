"""Study 004's model comparison and pruning sweep: tables and figures."""

from cliplens.core.runlog import job_log
from cliplens.studies.purity.jobs import run_purity_table

with job_log(snakemake.log[0], threads=snakemake.threads):
    run_purity_table(**snakemake.params, weights=list(snakemake.input.weights),
                     evals=list(snakemake.input.evals), out_compare=snakemake.output.compare,
                     out_pruning=snakemake.output.pruning,
                     out_compare_png=snakemake.output.compare_png,
                     out_pruning_png=snakemake.output.pruning_png)
