"""reconstructions.png: held-out images beside their reconstruction from every extractor."""

import numpy as np

from cliplens.inversion import plot_reconstructions, read_heldout
from cliplens.runlog import job_log
from cliplens.tokens import open_view

with job_log(snakemake.log[0]):
    p = snakemake.params
    cols, prov = [], None
    for path in snakemake.input.heldout:
        rec, prov = read_heldout(path)
        label = f"{prov['group']} {prov['resolution']}px\n{prov['model'].split('/')[-1]}"
        cols.append((label, rec[: p.n_images]))
    data = open_view(prov["dataset"], prov["split"], **p.roots)
    originals = [np.asarray(im) for im in data.images(0, min(p.n_images, len(cols[0][1])))]
    plot_reconstructions(originals, cols, snakemake.output[0], title=(
        f"Held-out images of {prov['dataset']}/{prov['split']} and their reconstructions from "
        f"the patch tokens (hidden state {prov['layer']}) of each extractor"))
