"""Nearest neighbours of TF-IDF rows for caption misalignment (study 004), in memory that grows
with N, never N².

Two searches, both by cosine similarity of unit rows (``X`` sparse [N, V], unit L2 norm, so
cos(i, j) = X_i · X_j):

* :func:`exact_neighbours` -- sklearn's brute-force ``NearestNeighbors``: each query against
  all N rows, O(N²) time.
* :func:`ivf_neighbours` -- an inverted-file index: the rows are clustered with sklearn's
  ``MiniBatchKMeans`` into C ≈ √N cells; the rows of cell c are compared only with the rows of
  the ``probes`` cells whose centres are nearest c's centre, O(N · probes · N/C) time when the
  cells are of similar sizes (the largest is logged; one huge cell brings back N²).  It is
  approximate: :func:`recall_at` measures how many of the exact top-k it finds.
"""

from __future__ import annotations

import numpy as np

#: the most similarities held at once by one block of :func:`ivf_neighbours` (float64: 256 MiB;
#: the block's sort and top-k indices take a few times that, about 1 GiB in all)
BLOCK_ENTRIES = 32 * 2 ** 20


def exact_neighbours(rows, m: int):
    """A search: ``queries`` [Q] -> the ``m`` rows of ``rows`` (sparse or dense [N, V], unit
    rows) most cosine-similar to each query row, nearest first, the query itself included
    when it is among them: int64 [Q, min(m, N)].  sklearn's brute-force ``NearestNeighbors``,
    fitted once, in chunks of its ``working_memory``."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=min(m, rows.shape[0]), metric="cosine",
                          algorithm="brute").fit(rows)
    return lambda queries: nn.kneighbors(rows[np.asarray(queries)], return_distance=False)


def _top(sim: np.ndarray, m: int) -> np.ndarray:
    """Column indices of the ``m`` largest entries of each row of ``sim``, largest first."""
    m = min(m, sim.shape[1])
    part = np.argpartition(-sim, m - 1, axis=1)[:, :m] if m < sim.shape[1] else \
        np.tile(np.arange(sim.shape[1]), (len(sim), 1))
    order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def ivf_neighbours(rows, m: int, *, probes: int = 8, clusters: int | None = None,
                   seed: int = 0, progress: bool = False) -> np.ndarray:
    """Approximate ``m`` nearest other rows of every row of ``rows`` (sparse [N, V], unit
    rows): int32 [N, m], nearest first, -1 where a row's probed cells hold fewer than ``m``
    other rows.  Cells: ``MiniBatchKMeans`` with ``clusters`` centres (default round(√N)),
    fitted on at most 100 rows per centre (``seed``), every row assigned to its nearest centre.
    The rows of cell c are queried, ``BLOCK_ENTRIES`` similarities at a time, against the rows
    of the ``probes`` cells whose unit centres have the largest cosine with c's (c itself
    first, always).
    ``probes`` >= the number of cells makes it exact."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.preprocessing import normalize
    from tqdm.auto import tqdm

    import logging

    n = rows.shape[0]
    if probes < 1 or m < 1:
        raise ValueError(f"probes ({probes}) and m ({m}) must be at least 1")
    c = int(clusters or max(1, round(np.sqrt(n))))
    c = min(c, n)
    rng = np.random.default_rng(seed)
    fit_rows = rows[np.sort(rng.choice(n, min(n, 100 * c), replace=False))]
    km = MiniBatchKMeans(n_clusters=c, random_state=seed, batch_size=4096, n_init=1).fit(fit_rows)
    cell = km.predict(rows)
    centres = normalize(km.cluster_centers_)
    between = centres @ centres.T
    np.fill_diagonal(between, np.inf)  # each cell probes itself first, even beside a twin centre
    near_cells = _top(between, min(probes, c))
    order = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[order], np.arange(c + 1))
    members = [order[bounds[i]:bounds[i + 1]] for i in range(c)]
    sizes = np.diff(bounds)
    logging.getLogger("cliplens").info(
        "TF-IDF index: %d rows in %d cells (largest %d, mean %.0f), %d probed per cell", n, c,
        sizes.max(), n / c, min(probes, c))
    out = np.full((n, m), -1, dtype=np.int32)
    for i in tqdm(range(c), desc="TF-IDF neighbours (IVF)", disable=not progress):
        queries = members[i]
        if not len(queries):
            continue
        cand = np.concatenate([members[j] for j in near_cells[i]])
        cand_rows = rows[cand].T.tocsr() if hasattr(rows, "tocsr") else rows[cand].T
        step = max(1, BLOCK_ENTRIES // max(1, len(cand)))
        for a in range(0, len(queries), step):
            q = queries[a:a + step]
            sim = rows[q] @ cand_rows
            sim = sim.toarray() if hasattr(sim, "toarray") else np.asarray(sim)
            sim[cand[None, :] == q[:, None]] = -np.inf  # never a row's own neighbour
            top = _top(sim, m)
            found = cand[top]
            found[np.take_along_axis(sim, top, axis=1) == -np.inf] = -1
            out[q, :found.shape[1]] = found
    return out


def recall_at(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean fraction of each row's exact top ``k`` (``exact`` [Q, >=k]) found in the first
    ``k`` entries of ``approx`` [Q, >=k]."""
    a, e = np.asarray(approx)[:, :k], np.asarray(exact)[:, :k]
    return float(np.mean([len(np.intersect1d(x, y)) / k for x, y in zip(a, e)]))
