"""Train the reconstructor of one extractor (resumes from its last checkpoint)."""

import os

import torch

from cliplens.inversion import run_training
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    meta = run_training(
        spec=p.spec, load=p.load, dataset=p.dataset,
        tokens_path=snakemake.input.tokens if p.train_tokens == "cache" else None,
        train_split=p.train_split, eval_split=p.eval_split, layer=p.layer,
        reconstructor=p.reconstructor, train=p.train,
        out_dir=os.path.dirname(snakemake.output.weights),
        checkpoint_dir=os.path.join(os.path.dirname(snakemake.output.weights), "checkpoints"),
        **p.roots, train_images=p.train_images)
    log.info("%s: %d steps in %.1f s (resumed from %s), final loss %.4f, held-out loss %s",
             p.spec, meta["steps"], meta["seconds"], meta["resumed_from"], meta["final_loss"],
             meta["val_history"][-1][1] if meta["val_history"] else "n/a")
