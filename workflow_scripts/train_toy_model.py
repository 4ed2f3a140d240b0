"""Train one toy model on the toy world's train split and save it in its library's format."""

import torch

from cliplens.data.toy import read_split
from cliplens.models.toy import train_toy_model
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    train = read_split(snakemake.input.data, "train", keys=("images",))
    val = read_split(snakemake.input.data, "val", keys=("images",))
    meta = train_toy_model(p.name, p.cfg, train, val, snakemake.output[0],
                           device=p.device)
    log.info("%s: %d steps in %.1f s (+%.1f s preparation), final loss %.4f, zero-shot on val %s",
             p.name, meta["steps"], meta["train_seconds"], meta["prep_seconds"],
             meta["final_loss"], meta.get("zeroshot"))
