"""Embed one shard (a contiguous row range) of a dataset split into an HDF5 cache."""

import torch

from cliplens.cache import extract_embeddings, shard_bounds
from cliplens.data.registry import open_dataset
from cliplens.models.registry import load_model
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    dataset = open_dataset(p.dataset, p.split, **p.roots)
    start, stop = shard_bounds(len(dataset), p.n_shards, p.shard, align=p.batch_size)
    log.info("%s on %s/%s: shard %d of %d = rows [%d, %d) of %d", p.spec, p.dataset, p.split,
             p.shard, p.n_shards, start, stop, len(dataset))
    model = load_model(p.spec, **p.load)
    model.model.eval()
    extract_embeddings(model, dataset, snakemake.output[0], start=start, stop=stop,
                       batch_size=p.batch_size, dtype=p.dtype, normalize=p.normalize)
