"""Per-feature summaries of an SAE's latents over a dataset, in one pass over blocks of
latents z [b, m] (never the [N, m] matrix):

* :func:`top_activations` -- each feature's k largest activations and their rows;
* :func:`activation_histograms` -- each feature's histogram of its non-zero activations on
  shared bin edges;
* :func:`collage` -- images tiled row by row into one square picture (the published 3 x 3).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def top_activations(blocks: Iterable[tuple[int, np.ndarray]], k: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(values [m, k], rows [m, k]): each feature's k largest activations, largest first, and
    the rows they come from, over ``blocks`` of (first row, z [b, m]).  Kept by concatenating
    each block to the running best and taking the top k again (O(m (k + b)) per block).  Rows
    past the data (fewer than k rows in all) are -1 with value -inf; ties go to the earlier
    row."""
    vals = rows = None
    for start, z in blocks:
        z = np.asarray(z, dtype=np.float64).T                            # [m, b]
        r = np.broadcast_to(np.arange(start, start + z.shape[1]), z.shape)
        if vals is None:
            vals = np.full((z.shape[0], k), -np.inf)
            rows = np.full((z.shape[0], k), -1, dtype=np.int64)
        v = np.concatenate([vals, z], 1)
        rr = np.concatenate([rows, r], 1)
        # stable by (-value, row): ties keep the earlier row
        order = np.lexsort((np.where(rr < 0, np.iinfo(np.int64).max, rr), -v), axis=1)[:, :k]
        vals = np.take_along_axis(v, order, 1)
        rows = np.take_along_axis(rr, order, 1)
    if vals is None:
        raise ValueError("no latents to rank")
    return vals, rows


def activation_histograms(blocks: Iterable[np.ndarray], edges: Sequence[float]) -> np.ndarray:
    """Counts [m, len(edges) - 1] of each feature's non-zero activations falling in each bin
    (numpy's rule: bins half-open except the last), over blocks of z [b, m]."""
    edges = np.asarray(edges, dtype=np.float64)
    counts = None
    for z in blocks:
        z = np.asarray(z, dtype=np.float64)
        if counts is None:
            counts = np.zeros((z.shape[1], len(edges) - 1), dtype=np.int64)
        b = np.searchsorted(edges, z, side="right") - 1
        b[z == edges[-1]] = len(edges) - 2
        ok = (z != 0) & (b >= 0) & (b < len(edges) - 1)
        feat = np.broadcast_to(np.arange(z.shape[1]), z.shape)[ok]
        np.add.at(counts, (feat, b[ok]), 1)
    if counts is None:
        raise ValueError("no latents to count")
    return counts


def collage(images: Sequence[np.ndarray], side: int = 3) -> np.ndarray:
    """``side`` x ``side`` tiles of equal-sized uint8 images [S, S, 3], row by row; missing
    tiles are black."""
    if not len(images):
        raise ValueError("no images for the collage")
    s = np.asarray(images[0]).shape
    out = np.zeros((side * s[0], side * s[1], 3), dtype=np.uint8)
    for i, im in enumerate(images[:side * side]):
        im = np.asarray(im)
        if im.shape != s:
            raise ValueError(f"collage images must share one shape; got {s} and {im.shape}")
        r, c = divmod(i, side)
        out[r * s[0]:(r + 1) * s[0], c * s[1]:(c + 1) * s[1]] = im
    return out
