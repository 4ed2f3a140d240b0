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
span, and ``n_texts >= rank`` recovers ``C`` exactly.  TextSpan stops early once no remaining
text direction is longer than ``rtol`` times the largest singular value of the (projected) text
set: past the text set's numerical rank every score is rounding noise, and the published code
would go on choosing texts by it.

PC-based explanations (``svd_data_approx`` of the published code): centre ``C`` and the texts,
take the SVD ``C = U S V^T``, keep the smallest rank r whose singular values reach ``mass``
(99 %) of their sum, and label each kept component by the texts with the largest and smallest
projection on it.  The published reconstruction goes through the span of the r top-1 texts in
the components' coordinates, ``P`` [r, r] (row i: the top text of component i, centred, times
``V_r^T``): ``mean + X V_r^T P^T (P P^T)^+ P V_r``.  It is the rank-r truncation
``mean + X V_r^T V_r`` only when the r labels are distinct and independent; when a text tops
several components, P loses rank and the reconstruction keeps less.  Both are computed; the
published one is the default.
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
    normalised) and ``mean`` [D] the head's mean over the fitted images; ``rank_stop`` whether
    it stopped because the text set had no direction left (fewer picks than asked)."""

    indices: np.ndarray
    variance: np.ndarray
    explained: np.ndarray
    reconstruction: np.ndarray
    n_components: int
    scoring: str
    basis: np.ndarray | None = None
    mean: np.ndarray | None = None
    rank_stop: bool = False

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
             scoring: str = "variance", rtol: float = 1e-7) -> TextSpanResult:
    """TextSpan of one head (see the module docstring).

    ``C`` [N, D] the head's direct effects, ``R`` [M, D] text embeddings; ``n_components``: rank
    of the span the texts are first projected on (None = no projection); ``scoring``: variance
    (published) or normalized; ``rtol``: stop once every remaining text direction is shorter
    than ``rtol`` sigma_1(R) (after the projection; float32 text embeddings resolve about 1e-7).
    Computes in float64; the result's ``rank_stop`` says whether it stopped there."""
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
    floor = rtol * (float(np.linalg.norm(R, 2)) if R.size else 0.0)
    picked, scores, explained, basis = [], [], [], []
    available = np.ones(len(R), dtype=bool)
    rank_stop = False
    for _ in range(n_texts):
        left = np.sqrt((R[available] ** 2).sum(1)).max() if available.any() else 0.0
        if left <= floor:  # the text set has no direction left: scores would be rounding noise
            rank_stop = True
            break
        P = X @ R.T                                   # [N, M]
        var = P.var(0)
        if scoring == "normalized":
            norms2 = (R ** 2).sum(1)
            var = np.where(norms2 > 1e-24, var / np.maximum(norms2, 1e-300), 0.0)
        long_enough = (R ** 2).sum(1) > floor ** 2
        var = np.where(available & long_enough, var, -np.inf)
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
                          np.asarray(basis).reshape(len(basis), C.shape[1]), mean, rank_stop)


RECONSTRUCTIONS = ("published", "truncation")


@dataclass
class PCExplanation:
    """``rank`` principal components reaching ``mass`` of the singular-value sum; for each,
    ``top``/``bottom`` [rank, k] text indices with the largest / smallest projection, and
    ``singular_values`` [rank]; ``reconstruction`` [N, D] as ``method`` asked (see
    :func:`pc_explanations`), ``explained`` its share of the centred variance, and both
    methods' shares side by side; ``distinct_labels`` the distinct top-1 texts and
    ``label_rank`` the rank of their span in the components' coordinates."""

    rank: int
    singular_values: np.ndarray
    components: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    reconstruction: np.ndarray
    explained: float = field(default=0.0)
    method: str = "published"
    explained_published: float = 0.0
    explained_truncation: float = 0.0
    distinct_labels: int = 0
    label_rank: int = 0


def _explained(X: np.ndarray, Y: np.ndarray) -> float:
    """``1 - |X - Y|^2 / |X|^2`` (1 for a zero X)."""
    total = float((X ** 2).sum())
    return 1.0 - float(((X - Y) ** 2).sum()) / total if total > 0 else 1.0


def row_space_projector(P: np.ndarray, rtol: float | None = None) -> tuple[np.ndarray, int]:
    """(``P^T (P P^T)^+ P`` [r, r], the rank of ``P`` [m, r]): the orthogonal projector onto
    the span of P's rows, from P's SVD with singular values below ``rtol`` sigma_1 (default
    ``max(P.shape)`` machine epsilons, as ``pinv``) counted as zero."""
    if P.size == 0:
        return np.zeros((P.shape[1], P.shape[1])), 0
    _, sv, vt = np.linalg.svd(P, full_matrices=False)
    tol = (max(P.shape) * np.finfo(P.dtype).eps if rtol is None else rtol) * sv[0]
    k = int((sv > tol).sum())
    return vt[:k].T @ vt[:k], k


def pc_explanations(C: np.ndarray, R: np.ndarray, mass: float = 0.99, k: int = 5,
                    reconstruction: str = "published") -> PCExplanation:
    """PC-based explanation of one head (``svd_data_approx``): centre ``C`` [N, D] and ``R``
    [M, D], SVD ``X = C - mean = U S V^T`` (each row of V signed so that its largest-magnitude
    entry is positive, sklearn's ``svd_flip``: which texts top a component depends on its
    sign, which LAPACK leaves arbitrary), keep the smallest r with
    ``cumsum(s)[r-1] >= mass * sum(s)``; label component i by the ``k`` texts with the largest
    and smallest ``(R - mean R) v_i``.

    ``reconstruction="published"``: ``mean + X V_r^T Pi V_r`` with Pi the projector onto the
    span of the rows of ``P = (R - mean R)[top-1 of each component] V_r^T`` [r, r]
    (:func:`row_space_projector`); ``"truncation"``: ``mean + X V_r^T V_r``, the rank-r PCA
    truncation.  They agree when the r top-1 texts are distinct and independent."""
    from sklearn.utils.extmath import svd_flip

    if reconstruction not in RECONSTRUCTIONS:
        raise ValueError(f"reconstruction must be one of {RECONSTRUCTIONS}, got "
                         f"{reconstruction!r}")
    C = np.asarray(C, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    mean = C.mean(0)
    X = C - mean
    U, s, vt = np.linalg.svd(X, full_matrices=False)
    U, vt = svd_flip(U, vt, u_based_decision=False)  # signs fixed, not left to the LAPACK build
    if s.sum() <= 0:
        r = 0
    else:
        r = int(np.searchsorted(np.cumsum(s) / s.sum(), mass - 1e-12) + 1)
        r = min(r, len(s))
    V = vt[:r]
    proj = (R - R.mean(0)) @ V.T                      # [M, r]
    order = np.argsort(-proj, axis=0, kind="stable")  # descending per component
    k = min(k, len(R))
    top = order[:k].T
    bottom = np.argsort(proj, axis=0, kind="stable")[:k].T
    coords = X @ V.T                                  # [N, r]
    truncation = coords @ V
    Pi, label_rank = row_space_projector(proj[top[:, 0]] if r else np.zeros((0, 0)))
    published = coords @ Pi @ V if r else np.zeros_like(X)
    ex_pub, ex_trunc = _explained(X, published), _explained(X, truncation)
    chosen = published if reconstruction == "published" else truncation
    return PCExplanation(r, s[:r], V, top, bottom, chosen + mean,
                         ex_pub if reconstruction == "published" else ex_trunc, reconstruction,
                         ex_pub, ex_trunc, int(len(set(top[:, 0].tolist()))) if r else 0,
                         label_rank)


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
    res = textspan(C, R, cfg.n_texts, n_components, cfg.scoring, cfg.rank_rtol)
    pc = pc_explanations(C, R, cfg.pc_mass, cfg.pc_texts, cfg.pc_reconstruction)
    entry = {
        "texts": res.texts(names), "scores": res.variance.tolist(),
        "explained": res.explained.tolist(), "meaningful_texts": len(res.indices),
        "stopped_at_text_rank": bool(res.rank_stop),
        "variance": float(((C - C.mean(0)) ** 2).sum(1).mean()),
        "pcs": {"rank": pc.rank, "explained": pc.explained, "reconstruction": pc.method,
                "explained_published": pc.explained_published,
                "explained_truncation": pc.explained_truncation,
                "distinct_labels": pc.distinct_labels, "label_rank": pc.label_rank,
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
             f"{len(chosen)} texts explain {100 * entry['explained'][-1]:.1f} %"
             + ("; the text set has no direction left after these" if
                entry.get("stopped_at_text_rank") else "") + ")"
             if len(chosen) else f"{label}  (no text chosen)"]
    for r, (t, s, e) in enumerate(zip(chosen, entry["scores"], entry["explained"])):
        lines.append(f"    {r + 1:2d}. {t:<40s} score {s:.4g}  cumulative {100 * e:5.1f} %")
    pcs = entry["pcs"]
    lines.append(f"    PCs reaching {100 * pc_mass:.0f} % of the singular values: "
                 f"{pcs['rank']}, {pcs.get('distinct_labels', pcs['rank'])} distinct top texts; "
                 f"reconstruction through their span (published) explains "
                 f"{100 * pcs.get('explained_published', pcs['explained']):.1f} % of the "
                 f"variance, the rank-{pcs['rank']} truncation "
                 f"{100 * pcs.get('explained_truncation', pcs['explained']):.1f} %")
    for j, comp in enumerate(entry["pcs"]["components"][:3]):
        lines.append(f"      PC{j + 1}: + {', '.join(comp['top'][:3])} | "
                     f"- {', '.join(comp['bottom'][:3])}")
    return lines + [""]
