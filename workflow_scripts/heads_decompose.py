"""Decompose one shard (a contiguous row range) of a dataset split into heads, MLPs and the rest."""

import torch

from cliplens.cache import shard_bounds
from cliplens.data.registry import open_dataset
from cliplens.heads import extract_decomposition
from cliplens.models.registry import load_model
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    dataset = open_dataset(p.dataset, p.split, **p.roots)
    start, stop = shard_bounds(len(dataset), p.n_shards, p.shard, align=p.batch_size)
    log.info("%s on %s/%s: shard %d of %d = rows [%d, %d) of %d, layers %s", p.spec, p.dataset,
             p.split, p.shard, p.n_shards, start, stop, len(dataset), p.layers)
    model = load_model(p.spec, **p.load)
    prov = extract_decomposition(model, dataset, snakemake.output[0], layers=p.layers,
                                 start=start, stop=stop, batch_size=p.batch_size, dtype=p.dtype)
    log.info("kept layers %s, %d heads each (%s)", prov["layers"], prov["heads"],
             prov["kind_decomposition"])
