"""Sparse text decomposition: each unit's component as k text embeddings.

Dictionary (M texts, width D): the text embeddings centred over the set (their mean removed),
then either

* ``atoms`` (default): each text (row) scaled to unit norm, the dictionary OMP assumes;
* ``columns``: each of the D coordinates (column) scaled to unit norm over the texts, as the
  published code does (its atoms then have unequal norms, which biases OMP towards long ones).

Each direction y [D] is approximated as ``y ~ sum_{j in S} w_j t_j`` with |S| = k exactly, by
orthogonal matching pursuit: pick the atom most correlated with the residual, refit the
least-squares weights on the chosen atoms, repeat k times.  Two implementations of the same
algorithm: sklearn's ``orthogonal_mp`` (one direction at a time; without a Gram matrix it
copies the dictionary per direction) and :func:`omp_batched` (many directions at once: one
matrix product per step for the correlations, batched normal equations for the weights), used
by default; the tests hold their supports equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

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


@dataclass
class OmpResult:
    """OMP of U directions: ``support`` [U, k] atom indices in the order chosen, ``weights``
    [U, k] the least-squares weights on them, and ``at[n]`` [U, n] the weights after n steps
    (OMP is greedy: the support after n steps is ``support[:, :n]``, so one run gives every
    smaller k exactly)."""

    support: np.ndarray
    weights: np.ndarray
    at: dict[int, np.ndarray] = field(default_factory=dict)

    def directions(self, dictionary: np.ndarray, n: int | None = None) -> np.ndarray:
        """The sparse approximations [U, D] after n steps (all k when None)."""
        n = self.support.shape[1] if n is None else n
        w = self.weights if n == self.support.shape[1] else self.at[n]
        return np.einsum("un,und->ud", w, np.asarray(dictionary)[self.support[:, :n]])


def omp_batched(directions: np.ndarray, dictionary: np.ndarray, k: int, chunk: int = 256,
                progress: bool = True, steps: Sequence[int] = ()) -> OmpResult:
    """Exact-k OMP of directions Y [U, D] over atoms T [M, D], ``chunk`` directions at a time
    (float64, torch): at step t, ``j_t = argmax_j |<r, T_j>|`` over atoms not yet chosen, then
    ``w = (A A^T)^{-1} A y`` on the chosen atoms A [t, D] and ``r = y - w A``.  The weights
    after each step in ``steps`` are kept too (:class:`OmpResult`)."""
    import torch
    from tqdm import tqdm

    t_all = torch.as_tensor(np.asarray(dictionary, dtype=np.float64))
    y_all = torch.as_tensor(np.asarray(directions, dtype=np.float64))
    u = y_all.shape[0]
    keep = sorted({int(n) for n in steps if 0 < int(n) < k})
    res = OmpResult(np.zeros((u, k), dtype=np.int64), np.zeros((u, k)),
                    {n: np.zeros((u, n)) for n in keep})
    bar = tqdm(total=u, unit="dir", desc=f"OMP k={k}", disable=not progress or u <= chunk,
               mininterval=2.0)
    for a in range(0, u, chunk):
        y = y_all[a:a + chunk]
        b = y.shape[0]
        r = y.clone()
        sup = torch.zeros(b, k, dtype=torch.long)
        taken = torch.zeros(b, t_all.shape[0], dtype=torch.bool)
        rows = torch.arange(b)
        w = None
        for t in range(k):
            corr = (r @ t_all.T).abs().masked_fill_(taken, -1.0)
            j = corr.argmax(1)
            sup[:, t] = j
            taken[rows, j] = True
            atoms = t_all[sup[:, :t + 1]]                              # [b, t+1, D]
            gram = atoms @ atoms.transpose(1, 2)
            rhs = (atoms @ y[:, :, None])[..., 0]
            w = torch.linalg.solve(gram, rhs)                          # [b, t+1]
            r = y - (w[:, None, :] @ atoms)[:, 0]
            if t + 1 in res.at:
                res.at[t + 1][a:a + b] = w.numpy()
        res.support[a:a + b] = sup.numpy()
        res.weights[a:a + b] = w.numpy()
        bar.update(b)
    bar.close()
    return res


def sparse_decompose(directions: np.ndarray, dictionary: np.ndarray, k: int,
                     method: str = "batched", steps: Sequence[int] = ()) -> OmpResult:
    """Exact-k OMP of directions [U, D] over ``dictionary`` [M, D] (:class:`OmpResult`, with
    the weights after each of ``steps`` too): ``method`` ``"batched"`` (:func:`omp_batched`)
    or ``"sklearn"`` (``orthogonal_mp``, with the Gram matrix when M <= 4096; its supports come
    in atom order and it keeps no steps).  Memory is O(U k), never O(U M)."""
    y = np.asarray(directions, dtype=np.float64)
    m, d = dictionary.shape
    check_k(k, m, d)
    if y.shape[1] != d:
        raise ValueError(f"directions have width {y.shape[1]}, the text embeddings {d}: "
                         "texts of another model?")
    if method == "batched":
        return omp_batched(y, dictionary, k, steps=steps)
    if method != "sklearn":
        raise ValueError(f"method must be 'batched' or 'sklearn', got {method!r}")
    if steps:
        raise ValueError("the weights after fewer steps need method='batched'")
    from sklearn.linear_model import orthogonal_mp

    coef = np.asarray(orthogonal_mp(dictionary.T, y.T, n_nonzero_coefs=k,
                                    precompute=m <= 4096)).reshape(m, -1).T
    sup = np.argsort(coef == 0, axis=1, kind="stable")[:, :k]      # atom order, not chosen
    return OmpResult(sup, np.take_along_axis(coef, sup, 1))


def sparse_codes(directions: np.ndarray, dictionary: np.ndarray, k: int,
                 method: str = "batched") -> np.ndarray:
    """Dense OMP weights [U, M] (k non-zeros per row): for small cases and tests; use
    :func:`sparse_decompose` for real text sets."""
    res = sparse_decompose(directions, dictionary, k, method)
    out = np.zeros((res.support.shape[0], dictionary.shape[0]))
    np.put_along_axis(out, res.support, res.weights, axis=1)
    return out


def top_texts(res: OmpResult, texts: Sequence[str], n: int | None = None
              ) -> list[list[tuple[str, float]]]:
    """Per unit, (text, weight) of its chosen texts by |weight|, largest first (the first n)."""
    order = np.argsort(-np.abs(res.weights), axis=1, kind="stable")
    out = []
    for sup, w, o in zip(res.support, res.weights, order):
        out.append([(texts[sup[j]], float(w[j])) for j in o[:n] if w[j] != 0])
    return out
