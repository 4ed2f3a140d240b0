"""v1_vs_v2.png: similarity against input resolution, SigLIP vs SigLIP2, one panel per scorer."""

import pandas as pd

from cliplens.inversion import plot_v1_vs_v2
from cliplens.runlog import job_log

with job_log(snakemake.log[0]):
    p = snakemake.params
    summary = pd.read_csv(snakemake.input[0])
    n = ", ".join(str(x) for x in sorted(summary["n"].unique()))
    title = (f"Images reconstructed from patch tokens (hidden state {p.layer}): SigLIP vs SigLIP2\n"
             f"cosine similarity of scorer embeddings, original vs reconstruction; n = {n} "
             f"held-out images of {p.dataset}/{p.split}; error bars: 95 % t-CI")
    plot_v1_vs_v2(summary, snakemake.output[0], title=title)
