"""rb_swap.png, b_suppression.png, colorization.png from the fitted colour operators."""

import numpy as np
import pandas as pd

from cliplens.inversion import plot_operator_figure
from cliplens.runlog import job_log

with job_log(snakemake.log[0]):
    p = snakemake.params
    rows = pd.read_csv(snakemake.input.table).to_dict("records")
    with np.load(snakemake.input.arrays) as z:
        arrays = {k: z[k] for k in z.files}
    for task, out in zip(p.tasks, snakemake.output):
        eig = [k for k in ("procrustes", "symmetric", "linear", "affine")
               if f"{task}/{k}/eig" in arrays] if task == "rb_swap" else []
        plot_operator_figure(task, rows, arrays, out, model=p.model, eigen_kinds=eig)
