"""Per-image similarity of originals and reconstructions under one scorer."""

import torch

from cliplens.inversion import run_scoring
from cliplens.io import atomic_path
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    with torch.inference_mode():
        df = run_scoring(scorer=p.scorer, load=p.load, heldout=list(snakemake.input.heldout),
                         variants=p.variants, **p.roots,
                         batch_size=p.batch_size)
    with atomic_path(snakemake.output[0]) as tmp:
        df.to_csv(tmp, index=False)
    log.info("%s: %d rows\n%s", p.scorer, len(df),
             df.groupby(["variant", "extractor"])["cosine"].mean().to_string())
