"""Patch tokens of one layer for one shard (a contiguous row range) of a dataset view."""

import torch

from cliplens.cache import shard_bounds
from cliplens.models.registry import load_model
from cliplens.runlog import job_log
from cliplens.tokens import extract_tokens, open_view

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    dataset = open_view(p.dataset, p.split, **p.roots,
                        image_key=p.key, rows=p.rows, blue_factor=p.blue_factor)
    start, stop = shard_bounds(len(dataset), p.n_shards, p.shard, align=p.batch_size)
    log.info("%s layer %d on %s/%s[%s] (%s): shard %d of %d = rows [%d, %d) of %d", p.spec,
             p.layer, p.dataset, p.split, p.rows, p.key, p.shard, p.n_shards, start, stop,
             len(dataset))
    model = load_model(p.spec, **p.load)
    model.model.eval()
    extract_tokens(model, dataset, snakemake.output[0], layer=p.layer, start=start, stop=stop,
                   batch_size=p.batch_size, dtype=p.dtype)
