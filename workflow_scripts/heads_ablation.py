"""Mean-ablation curves: attention heads, MLPs, CLS->CLS attention, first l layers."""

import torch

from cliplens.head_jobs import run_ablation
from cliplens.models.registry import load_model
from cliplens.runlog import job_log

with job_log(snakemake.log[0]):
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    model = load_model(p.spec, **p.load)
    caches = {t: snakemake.input[t] for t in p.tasks}
    run_ablation(p.spec, model, caches, p.roots, snakemake.output.csv, snakemake.output.png)
