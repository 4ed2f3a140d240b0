"""Zero-shot segmentation against object masks, and the spatial-map figure."""

import torch

from cliplens.head_jobs import run_segmentation
from cliplens.models.registry import load_model
from cliplens.runlog import job_log

with job_log(snakemake.log[0]):
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    model = load_model(p.spec, **p.load)
    run_segmentation(p.spec, model, p.roots, p.cfg, snakemake.input.texts,
                     snakemake.input.textspan, snakemake.output.csv, snakemake.output.png)
