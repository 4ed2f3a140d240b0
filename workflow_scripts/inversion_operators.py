"""Fit the colour operators on train token pairs and evaluate them on held-out images."""

import os

import numpy as np
import pandas as pd
import torch

from cliplens.inversion import run_operators
from cliplens.io import atomic_path
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    rows, arrays = run_operators(
        spec=p.spec, load=p.load, recon_dir=os.path.dirname(snakemake.input.weights),
        train_caches=p.train_caches, test_caches=p.test_caches, dataset=p.dataset,
        test_split=p.test_split, tasks=p.tasks, ridge=p.ridge, n_examples=p.n_examples,
        test_images=p.test_images, blue_factor=p.blue_factor, layer=p.layer, **p.roots)
    table = pd.DataFrame(rows)
    with atomic_path(snakemake.output.table) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(snakemake.output.arrays) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    cols = ["task", "kind", "r2", "r2_identity", "mse_vs_transformed", "mse_vs_original"]
    log.info("operators of %s:\n%s", p.spec, table[cols].to_string())
