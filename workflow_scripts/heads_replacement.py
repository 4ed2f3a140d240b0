"""Accuracy with every explained head replaced by its TextSpan reconstruction."""

import torch

from cliplens.head_jobs import run_replacement
from cliplens.models.registry import load_model
from cliplens.runlog import job_log

with job_log(snakemake.log[0]):
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    model = load_model(p.spec, **p.load)
    caches = {t: snakemake.input[t] for t in p.tasks}
    run_replacement(p.spec, model, snakemake.input.textspan, caches, p.roots, p.cfg,
                    snakemake.output[0])
