"""Reconstruct the held-out images from one extractor's tokens."""

import os

import torch

from cliplens.inversion import run_heldout
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    prov = run_heldout(
        spec=p.spec, load=p.load, recon_dir=os.path.dirname(snakemake.input.weights),
        dataset=p.dataset, split=p.split, n_images=p.n_images, layer=p.layer, group=p.group,
        out_path=snakemake.output[0], **p.roots,
        batch_size=p.batch_size)
    log.info("%s (%s, %d px): reconstructed %d images of %s/%s", p.spec, p.group,
             prov["resolution"], prov["n"], p.dataset, p.split)
