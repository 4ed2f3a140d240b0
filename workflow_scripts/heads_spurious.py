"""Worst-group accuracy before and after mean-ablating the heads that carry a spurious cue."""

import torch

from cliplens.head_jobs import run_spurious
from cliplens.io import write_json_atomic
from cliplens.models.registry import load_model
from cliplens.runlog import job_log

with job_log(snakemake.log[0]):
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    model = load_model(p.spec, **p.load)
    out = snakemake.output
    summary = run_spurious(p.spec, model, p.task, snakemake.input.fit, snakemake.input["eval"],
                           p.roots, p.cfg, out.csv, out.png)
    write_json_atomic(out.json, summary)
