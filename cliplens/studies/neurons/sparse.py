"""Sparse text decomposition: each unit's component as k text embeddings.

Dictionary (M texts, width D): the text embeddings centred over the set (their mean removed),
then either

* ``atoms`` (default): each text (row) scaled to unit norm, the dictionary OMP assumes;
* ``columns``: each of the D coordinates (column) scaled to unit norm over the texts, as the
  published code does (its atoms then have unequal norms, which biases OMP towards long ones).

Each direction y [D] is approximated as ``y ~ sum_{j in S} w_j t_j`` with |S| = k exactly, by
orthogonal matching pursuit (sklearn's ``orthogonal_mp``): pick the atom most correlated with
the residual, refit the least-squares weights on the chosen atoms, repeat k times.
"""

from __future__ import annotations

import numpy as np

NORMALISE = ("atoms", "columns")


def text_dictionary(embeddings: np.ndarray, normalise: str = "atoms") -> np.ndarray:
    """The centred, normalised dictionary [M, D] of text embeddings [M, D] (module docstring)."""
    if normalise not in NORMALISE:
        raise ValueError(f"normalise must be one of {NORMALISE}, got {normalise!r}")
    t = np.asarray(embeddings, dtype=np.float64)
    t = t - t.mean(0, keepdims=True)
    axis = 1 if normalise == "atoms" else 0
    norms = np.linalg.norm(t, axis=axis, keepdims=True)
    return np.divide(t, norms, out=np.zeros_like(t), where=norms > 0)


def check_k(k: int, n_texts: int, width: int) -> None:
    """k must be >= 1, at most the number of texts and at most the embedding width (OMP cannot
    pick more linearly independent atoms than that)."""
    if k < 1:
        raise ValueError(f"k = {k}: at least one text per direction")
    if k > n_texts:
        raise ValueError(f"k = {k} texts per direction asked, but the text set has {n_texts}")
    if k > width:
        raise ValueError(f"k = {k} texts per direction asked, but the embeddings have width "
                         f"{width}: at most {width} independent texts fit")


def sparse_codes(directions: np.ndarray, dictionary: np.ndarray, k: int) -> np.ndarray:
    """OMP weights [U, M] (k non-zeros per row) of directions [U, D] over ``dictionary``
    [M, D].  The Gram matrix is precomputed when M <= 4096 (M^2 floats), else every step
    correlates with the M atoms directly."""
    from sklearn.linear_model import orthogonal_mp

    y = np.asarray(directions, dtype=np.float64)
    m, d = dictionary.shape
    check_k(k, m, d)
    if y.shape[1] != d:
        raise ValueError(f"directions have width {y.shape[1]}, the text embeddings {d}: "
                         "texts of another model?")
    coef = orthogonal_mp(dictionary.T, y.T, n_nonzero_coefs=k, precompute=m <= 4096)
    return np.asarray(coef).reshape(m, -1).T


def top_texts(codes: np.ndarray, texts: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Per unit, the (text, weight) of its k largest |weights|, largest first."""
    out = []
    for row in codes:
        idx = np.argsort(-np.abs(row), kind="stable")[:k]
        out.append([(texts[j], float(row[j])) for j in idx if row[j] != 0])
    return out
