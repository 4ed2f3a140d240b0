"""Purity of a projection layer's output neurons, computed on its weights, and what pruning by
it keeps.

A projection ``y = x W`` with ``W`` [D_in, D_out] has D_out output neurons; neuron i's weight
vector is column i of ``W``, i.e. row i of ``R = Wᵀ`` [D_out, D_in].  With the rows scaled to
unit norm, ``C = R̂ R̂ᵀ`` is the cosine matrix of the neurons.  A *pure* neuron points away from
the others (small |C_ij|); a layer of orthogonal neurons has C = I.
"""

from __future__ import annotations

import numpy as np

MODES = ("pure", "impure", "random")


def cosine_matrix(rows: np.ndarray) -> np.ndarray:
    """The cosines of the rows of ``rows`` [n, d] (each scaled to unit norm), [n, n], float64.
    A zero row is an error: it has no direction."""
    r = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(r, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"rows {np.flatnonzero(norms[:, 0] == 0)[:5].tolist()} are zero: no "
                         f"direction to compare")
    u = r / norms
    return u @ u.T


def purity_metrics(rows: np.ndarray, include_diagonal: bool = False) -> dict[str, float]:
    """Statistics of |C| off the diagonal for neurons ``rows`` [n, d] (n >= 2): ``mean_abs``,
    ``max_abs``, ``median_abs``, ``std_abs``, ``signed_mean`` (of C itself) and the mean, min
    and max of the per-neuron purity ``1 / mean_j |C_ij|`` (inf for a neuron orthogonal to all).

    ``include_diagonal=True`` is the published variant: the diagonal is set to zero and kept
    in the means, so each mean is over n² entries instead of n(n - 1) (the published means are
    (n - 1)/n of ours; the maximum is the same)."""
    C = cosine_matrix(rows)
    n = len(C)
    if n < 2:
        raise ValueError("purity needs at least two neurons")
    off = ~np.eye(n, dtype=bool)
    if include_diagonal:
        C = np.where(off, C, 0.0)
        values, per = C.ravel(), np.abs(C).mean(1)
    else:
        values, per = C[off], np.abs(C[off]).reshape(n, n - 1).mean(1)
    a = np.abs(values)
    with np.errstate(divide="ignore"):
        purity = 1.0 / per
    return {"neurons": int(n), "include_diagonal": bool(include_diagonal),
            "mean_abs": float(a.mean()), "max_abs": float(np.abs(C[off]).max()),
            "median_abs": float(np.median(a)), "std_abs": float(a.std()),
            "signed_mean": float(values.mean()), "purity_mean": float(purity.mean()),
            "purity_min": float(purity.min()), "purity_max": float(purity.max())}


def neuron_scores(rows: np.ndarray) -> np.ndarray:
    """Each neuron's summed |cosine| to the others, ``sum_{j != i} |C_ij|`` [n]: low = pure."""
    C = np.abs(cosine_matrix(rows))
    np.fill_diagonal(C, 0.0)
    return C.sum(1)


def keep_mask(scores: np.ndarray, k: int, mode: str, seed: int = 0) -> np.ndarray:
    """Which of the n neurons to keep [n] bool: the ``k`` lowest scores (``pure``), the ``k``
    highest (``impure``; ties by index in both) or ``k`` drawn at random with ``seed``."""
    n = len(scores)
    if not 1 <= k <= n:
        raise ValueError(f"keep k = {k} of {n} neurons: k must be between 1 and the embedding "
                         f"width {n}")
    if mode not in MODES:
        raise ValueError(f"unknown pruning mode {mode!r}; known: {MODES}")
    if mode == "random":
        idx = np.random.default_rng(seed).choice(n, size=k, replace=False)
    else:
        order = np.argsort(scores if mode == "pure" else -scores, kind="stable")
        idx = order[:k]
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return mask


def pruned_scores(x: np.ndarray, classifier: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                  silhouette_sample: int | None = None, seed: int = 0) -> dict[str, float]:
    """Zero-shot accuracy of the image embeddings ``x`` [N, D] with the dimensions outside
    ``mask`` [D] zeroed (the classifier [D, K] unchanged), and the cosine silhouette of those
    pruned embeddings against ``labels`` [N] (sklearn; on ``silhouette_sample`` rows drawn with
    ``seed`` when given)."""
    from sklearn.metrics import silhouette_score

    xp = np.where(mask[None, :], x, 0.0)
    acc = float((np.argmax(xp @ classifier, 1) == np.asarray(labels)).mean())
    sample = silhouette_sample if silhouette_sample and silhouette_sample < len(x) else None
    sil = float(silhouette_score(xp, labels, metric="cosine", sample_size=sample,
                                 random_state=seed))
    return {"accuracy": acc, "silhouette": sil}
