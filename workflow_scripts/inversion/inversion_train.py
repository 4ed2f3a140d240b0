"""Train the reconstructor of one extractor (resumes from its last checkpoint)."""

import os

from cliplens.core.jobs import model_load
from cliplens.core.runlog import job_log
from cliplens.studies.inversion.jobs import run_train

with job_log(snakemake.log[0], threads=snakemake.threads):
    p = dict(snakemake.params)
    p["load"] = model_load(snakemake.config)
    tokens = snakemake.input.tokens if p.pop("train_tokens") == "cache" else None
    run_train(**p, tokens=tokens, out_dir=os.path.dirname(snakemake.output.weights))
