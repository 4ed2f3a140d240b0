"""Draw one toy dataset (all its splits) and write it as HDF5."""

import time

from cliplens import toyworld
from cliplens.data.toy import write_toy_dataset
from cliplens.io import library_versions
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    dataset, cfg = snakemake.wildcards.dataset, snakemake.params.cfg
    t0 = time.perf_counter()
    splits = toyworld.generate(dataset, cfg)
    log.info("drew %s: %s in %.1f s", dataset, {k: len(v) for k, v in splits.items()},
             time.perf_counter() - t0)
    provenance = {"dataset": dataset, "generator": cfg, "versions": library_versions()}
    write_toy_dataset(snakemake.output[0], splits, provenance)
