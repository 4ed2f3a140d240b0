"""Study 001: explaining a head's direct effect with text, and mean-ablations.

Notation.  A head's direct effect on ``N`` images is a matrix ``C`` [N, D] (row n: the head's
term in image n's embedding, in the joint space, see :mod:`.decompose`).  A text set is a
matrix ``R`` [M, D] of text embeddings (unit norm).  A decomposition of N images is stored as
``heads`` [N, L, H, D] (attention terms summed over source tokens), ``mlps`` [N, L + 1, D]
(index 0 = the embedding term) and ``rest`` [N, D] (bias terms): their sum is the embedding.

TextSpan (Gandelsman et al., ICLR 2024), per head:

1. Project the texts onto the span of the top ``n_components`` right singular vectors of the
   *uncentred* ``C``: ``R <- R V_k^T V_k``.
2. Centre ``C <- C - mean(C)``.
3. Repeat ``n_texts`` times: score each text r by the variance over images of ``C r``
   (``scoring="variance"``, the published choice: the raw dot product with the projected and
   deflated text, so a text keeps a longer remaining direction an advantage) or of
   ``C r / |r|`` (``scoring="normalized"``, a fix: the variance captured per unit direction);
   pick the best text r*, add ``C r* r*^T / |r*|^2`` to the reconstruction, and remove the
   direction from ``C`` and from every text (``X <- X - X r* r*^T / |r*|^2``).

The chosen directions are orthogonal by construction (Gram-Schmidt on the chosen texts), so the
reconstruction ``mean(C) + sum_j C r_j r_j^T / |r_j|^2`` is the projection of ``C`` onto their
span, and ``n_texts >= rank`` recovers ``C`` exactly.

PC-based explanations (``svd_data_approx`` of the published code): centre ``C`` and the texts,
take the SVD ``C = U S V^T``, keep the smallest rank r whose singular values reach ``mass``
(99 %) of their sum, and label each kept component by the texts with the largest and smallest
projection on it.  Its reconstruction is the rank-r PCA truncation of ``C`` (plus the mean)
whatever the labels are, which :func:`pc_explanations` returns as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

SCORINGS = ("variance", "normalized")


@dataclass
class TextSpanResult:
    """Chosen texts of one head, best first.

    ``indices`` [m] into the text set; ``variance`` [m] the score of each pick (variance over
    images at the time it was picked); ``explained`` [m] the cumulative share of the centred
    head's total variance that the reconstruction explains after each pick; ``reconstruction``
    [N, D] the head's reconstruction from the chosen texts (mean included); ``basis`` [m, D]
    the orthonormal directions picked (each chosen text after projection and deflation,
    normalised) and ``mean`` [D] the head's mean over the fitted images."""

    indices: np.ndarray
    variance: np.ndarray
    explained: np.ndarray
    reconstruction: np.ndarray
    n_components: int
    scoring: str
    basis: np.ndarray | None = None
    mean: np.ndarray | None = None

    def texts(self, names: Sequence[str]) -> list[str]:
        return [names[i] for i in self.indices]

    def project(self, C: np.ndarray, n_texts: int | None = None) -> np.ndarray:
        """Reconstruction of other images' direct effects ``C`` [N', D] from the first
        ``n_texts`` picks (None = all): ``mean + (C - mean) B^T B`` with ``B`` the first rows of
        ``basis``.  On the fitted images with every pick this equals ``reconstruction``."""
        return project_on_basis(C, self.basis, self.mean, n_texts)


def project_on_basis(C: np.ndarray, basis: np.ndarray, mean: np.ndarray,
                     n: int | None = None) -> np.ndarray:
    """``mean + (C - mean) B^T B`` with ``B`` the first ``n`` rows (None = all) of an orthonormal
    ``basis`` [m, D]: the reconstruction of direct effects ``C`` [N, D] from TextSpan's picks."""
    B = basis[: len(basis) if n is None else int(n)]
    X = np.asarray(C, dtype=np.float64) - mean
    return mean + (X @ B.T) @ B


def textspan(C: np.ndarray, R: np.ndarray, n_texts: int = 10, n_components: int | None = 80,
             scoring: str = "variance") -> TextSpanResult:
    """TextSpan of one head (see the module docstring).

    ``C`` [N, D] the head's direct effects, ``R`` [M, D] text embeddings; ``n_components``: rank
    of the span the texts are first projected on (None = no projection); ``scoring``: variance
    (published) or normalized.  Computes in float64."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    C = np.asarray(C, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    if C.ndim != 2 or R.ndim != 2 or C.shape[1] != R.shape[1]:
        raise ValueError(f"C [N, D] and R [M, D] must share D, got {C.shape} and {R.shape}")
    n_texts = int(min(n_texts, len(R)))
    if n_components is not None:
        _, _, vt = np.linalg.svd(C, full_matrices=False)
        V = vt[: int(n_components)]
        R = (R @ V.T) @ V
    mean = C.mean(0)
    X = C - mean
    total = float((X ** 2).sum())
    recon = np.zeros_like(X)
    R = R.copy()
    picked, scores, explained, basis = [], [], [], []
    available = np.ones(len(R), dtype=bool)
    for _ in range(n_texts):
        P = X @ R.T                                   # [N, M]
        var = P.var(0)
        if scoring == "normalized":
            norms2 = (R ** 2).sum(1)
            var = np.where(norms2 > 1e-24, var / np.maximum(norms2, 1e-300), 0.0)
        var = np.where(available, var, -np.inf)
        j = int(np.argmax(var))
        r = R[j]
        rr = float(r @ r)
        if not np.isfinite(var[j]) or rr <= 1e-24:
            break
        proj = np.outer(X @ r, r) / rr                # [N, D]
        recon += proj
        X = X - proj
        R = R - np.outer(R @ r, r) / rr
        available[j] = False
        picked.append(j)
        basis.append(r / np.sqrt(rr))
        scores.append(float(var[j]))
        explained.append(1.0 - float((X ** 2).sum()) / total if total > 0 else 1.0)
    return TextSpanResult(np.asarray(picked, dtype=np.int64), np.asarray(scores),
                          np.asarray(explained), recon + mean,
                          -1 if n_components is None else int(n_components), scoring,
                          np.asarray(basis).reshape(len(basis), C.shape[1]), mean)


@dataclass
class PCExplanation:
    """``rank`` principal components reaching ``mass`` of the singular-value sum; for each,
    ``top``/``bottom`` [rank, k] text indices with the largest / smallest projection, and
    ``singular_values`` [rank]; ``reconstruction`` [N, D] = mean + rank-r PCA truncation."""

    rank: int
    singular_values: np.ndarray
    components: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    reconstruction: np.ndarray
    explained: float = field(default=0.0)


def pc_explanations(C: np.ndarray, R: np.ndarray, mass: float = 0.99, k: int = 5
                    ) -> PCExplanation:
    """PC-based explanation of one head (``svd_data_approx``): centre ``C`` [N, D] and ``R``
    [M, D], SVD of ``C``, keep the smallest r with ``cumsum(s)[r-1] >= mass * sum(s)``; label
    component i by the ``k`` texts with the largest and smallest ``(R - mean R) v_i``.
    ``explained`` is the share of the centred variance kept (``sum s_i^2, i < r / sum s^2``)."""
    C = np.asarray(C, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    mean = C.mean(0)
    X = C - mean
    U, s, vt = np.linalg.svd(X, full_matrices=False)
    if s.sum() <= 0:
        r = 0
    else:
        r = int(np.searchsorted(np.cumsum(s) / s.sum(), mass - 1e-12) + 1)
        r = min(r, len(s))
    V = vt[:r]
    proj = (R - R.mean(0)) @ V.T                      # [M, r]
    order = np.argsort(-proj, axis=0)                 # descending per component
    k = min(k, len(R))
    top = order[:k].T
    bottom = order[::-1][:k].T
    recon = (U[:, :r] * s[:r]) @ V + mean
    explained = float((s[:r] ** 2).sum() / (s ** 2).sum()) if s.sum() > 0 else 1.0
    return PCExplanation(r, s[:r], V, top, bottom, recon, explained)


# ---------------------------------------------------------------------------------------------
# classification with replaced or ablated terms


def embeddings_from_terms(heads: np.ndarray, mlps: np.ndarray, rest: np.ndarray | None = None
                          ) -> np.ndarray:
    """Image embeddings [N, D] = sum of heads [N, L, H, D], mlps [N, L + 1, D] and rest [N, D]."""
    out = heads.sum((1, 2), dtype=np.float64) + mlps.sum(1, dtype=np.float64)
    if rest is not None:
        out = out + rest
    return out



def mean_ablate(terms: np.ndarray, which: np.ndarray | Sequence[bool], axis: int = 1,
                means: np.ndarray | None = None) -> np.ndarray:
    """``terms`` with the entries selected by the boolean ``which`` along ``axis`` replaced by
    their mean over images (axis 0) — or by ``means`` (the same shape as ``terms[0]``, e.g. the
    means over a training set)."""
    if axis < 1:
        raise ValueError("axis 0 indexes images; ablate along a term axis (>= 1)")
    terms = np.array(terms, copy=True)
    which = np.asarray(which, dtype=bool)
    m = terms.mean(0) if means is None else np.asarray(means)
    idx = [slice(None)] * terms.ndim
    idx[axis] = which
    terms[tuple(idx)] = np.broadcast_to(m, terms.shape[1:])[tuple(idx[1:])]
    return terms


def replace_heads(heads: np.ndarray, replacements: Mapping[tuple[int, int], np.ndarray]
                  ) -> np.ndarray:
    """``heads`` [N, L, H, D] with head (layer, head) replaced by ``replacements[(l, h)]``
    [N, D] (e.g. its TextSpan reconstruction)."""
    out = np.array(heads, copy=True)
    for (l, h), rec in replacements.items():
        out[:, l, h] = rec
    return out


# ---------------------------------------------------------------------------------------------
# one head, explained


def explain_head(C: np.ndarray, R: np.ndarray, names: Sequence[str], cfg,
                 n_components: int | None) -> tuple[dict, TextSpanResult]:
    """TextSpan (:func:`textspan`) and the PC explanation (:func:`pc_explanations`) of one head's
    direct effects ``C`` [N, D] with the texts ``R`` [M, D] called ``names``, with the
    ``heads.textspan`` settings ``cfg``.  Returns (summary: ``texts``, ``scores``,
    ``explained``, ``variance`` -- the mean squared norm of the centred effects -- and ``pcs``
    with the first 5 components' top/bottom texts; the TextSpan result)."""
    res = textspan(C, R, cfg.n_texts, n_components, cfg.scoring)
    pc = pc_explanations(C, R, cfg.pc_mass, cfg.pc_texts)
    entry = {
        "texts": res.texts(names), "scores": res.variance.tolist(),
        "explained": res.explained.tolist(),
        "variance": float(((C - C.mean(0)) ** 2).sum(1).mean()),
        "pcs": {"rank": pc.rank, "explained": pc.explained,
                "components": [{"singular_value": float(pc.singular_values[j]),
                                "top": [names[k] for k in pc.top[j]],
                                "bottom": [names[k] for k in pc.bottom[j]]}
                               for j in range(min(pc.rank, 5))]},
    }
    return entry, res


def head_report(label: str, entry: dict, pc_mass: float) -> list[str]:
    """Readable lines of one head's :func:`explain_head` summary."""
    chosen = entry["texts"]
    lines = [f"{label}  (direct-effect variance {entry['variance']:.4g}; "
             f"{len(chosen)} texts explain {100 * entry['explained'][-1]:.1f} %)"
             if len(chosen) else f"{label}  (no text chosen)"]
    for r, (t, s, e) in enumerate(zip(chosen, entry["scores"], entry["explained"])):
        lines.append(f"    {r + 1:2d}. {t:<40s} score {s:.4g}  cumulative {100 * e:5.1f} %")
    lines.append(f"    PCs reaching {100 * pc_mass:.0f} % of the singular values: "
                 f"{entry['pcs']['rank']} (explain {100 * entry['pcs']['explained']:.1f} % of "
                 "the variance)")
    for j, comp in enumerate(entry["pcs"]["components"][:3]):
        lines.append(f"      PC{j + 1}: + {', '.join(comp['top'][:3])} | "
                     f"- {', '.join(comp['bottom'][:3])}")
    return lines + [""]
