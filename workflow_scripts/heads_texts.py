"""Embed the text sets that explain heads with the model being explained."""

import torch

from cliplens.head_jobs import run_texts
from cliplens.models.registry import load_model
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    model = load_model(p.spec, **p.load)
    n = run_texts(model, p.sources, p.n_words, snakemake.output[0])
    log.info("%s: %d texts from %s", p.spec, n, ", ".join(p.sources))
