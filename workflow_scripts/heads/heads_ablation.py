"""Mean-ablation curves: attention heads, MLPs, CLS->CLS attention, first l layers."""

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.heads.jobs import run_ablation

with job_log(snakemake.log[0], threads=snakemake.threads):
    p = dict(snakemake.params)
    p["load"] = model_load(snakemake.config)
    caches = {t: snakemake.input[t] for t in p.pop("tasks")}
    run_ablation(**p, caches=caches, out_csv=snakemake.output.csv, out_png=snakemake.output.png)
