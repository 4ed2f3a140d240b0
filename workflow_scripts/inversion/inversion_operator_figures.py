"""rb_swap.png, b_suppression.png, colorization.png from the fitted colour operators."""

from cliplens.core.runlog import job_log
from cliplens.studies.inversion.jobs import run_operator_figures

with job_log(snakemake.log[0]):
    run_operator_figures(**snakemake.params, table=snakemake.input.table,
                         arrays=snakemake.input.arrays, outs=list(snakemake.output))
