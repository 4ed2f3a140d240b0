"""Operators in feature space: maps W with f(T(image)) ~ f(image) W, fitted on token pairs.

Conventions (all functions): features are **row vectors**.  ``X`` [n, d] holds features of the
original images (one row per token), ``Y`` [n, d] the features of the transformed images at the
same token positions, and an operator acts as ``Y_hat = X @ W (+ b)`` with ``W`` [d, d] and ``b``
[d].  (In column-vector notation the operator is ``Q = W^T``: ``y = Q x``; W and Q have the same
eigenvalues.)

Fitting works from the sufficient statistics of the pairs (:class:`PairStats`, accumulated in
float64 over chunks, so any number of token pairs fits in O(d^2) memory) or directly from arrays.

* :func:`procrustes` -- orthogonal W (W^T W = I) minimising ||X W - Y||_F
  (``scipy.linalg.orthogonal_procrustes``).
* :func:`symmetric_orthogonal` -- symmetric orthogonal W (W = W^T, W^2 = I: a self-inverse map, a
  reflection through a subspace) minimising ||X W - Y||_F.
* :func:`linear_map` -- unconstrained W (and optionally b) by least squares / ridge regression.
* :func:`r2_score` / :class:`R2` -- coefficient of determination of predicted features.
* :func:`eigen_spectrum` -- eigenvalues of W (complex), e.g. to see whether an R<->B swap operator
  has its spectrum at +-1 as an involution must.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from .naming import OPERATOR_KINDS, OPERATOR_TASKS  # noqa: F401  (re-exported)


# ---------------------------------------------------------------------------------------------
# sufficient statistics


@dataclass
class PairStats:
    """Running sums over pairs (x_i, y_i), x_i, y_i in R^d, in float64.

    ``n`` = number of pairs, ``sx`` = sum x_i [d], ``sy`` = sum y_i [d], ``xx`` = X^T X [d, d],
    ``xy`` = X^T Y [d, d], ``yy`` = sum ||y_i||^2 (a scalar: enough for residual sums).
    """

    d: int
    n: int = 0
    sx: np.ndarray = field(default=None)
    sy: np.ndarray = field(default=None)
    xx: np.ndarray = field(default=None)
    xy: np.ndarray = field(default=None)
    yy: float = 0.0

    def __post_init__(self):
        d = self.d
        self.sx = np.zeros(d) if self.sx is None else self.sx
        self.sy = np.zeros(d) if self.sy is None else self.sy
        self.xx = np.zeros((d, d)) if self.xx is None else self.xx
        self.xy = np.zeros((d, d)) if self.xy is None else self.xy

    def update(self, X: np.ndarray, Y: np.ndarray) -> "PairStats":
        """Add the pairs (rows of) ``X``, ``Y`` [m, d]; returns self."""
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64)
        if X.shape != Y.shape or X.ndim != 2 or X.shape[1] != self.d:
            raise ValueError(f"expected X, Y of shape [m, {self.d}], got {X.shape} and {Y.shape}")
        self.n += len(X)
        self.sx += X.sum(0)
        self.sy += Y.sum(0)
        self.xx += X.T @ X
        self.xy += X.T @ Y
        self.yy += float(np.einsum("ij,ij->", Y, Y))
        return self

    @classmethod
    def from_arrays(cls, X: np.ndarray, Y: np.ndarray, chunk: int = 65536) -> "PairStats":
        st = cls(np.asarray(X).shape[1])
        for a in range(0, len(X), chunk):
            st.update(X[a:a + chunk], Y[a:a + chunk])
        return st


def _stats(X, Y=None) -> PairStats:
    if isinstance(X, PairStats):
        return X
    return PairStats.from_arrays(X, Y)


# ---------------------------------------------------------------------------------------------
# fitting


def procrustes(X, Y=None) -> np.ndarray:
    """Orthogonal Procrustes: W = argmin_{W^T W = I} ||X W - Y||_F^2, W [d, d].

    Since ||X W||_F = ||X||_F for orthogonal W, this maximises tr(W^T M) with M = X^T Y; with the
    SVD M = U S V^T the maximiser is W = U V^T (Schoenemann 1966).  Arrays go to
    ``scipy.linalg.orthogonal_procrustes(X, Y)``; :class:`PairStats` (only M is needed) go to the
    same routine as ``orthogonal_procrustes(I, M)``, which computes the SVD of I^T M = M.
    """
    if isinstance(X, PairStats):
        return scipy.linalg.orthogonal_procrustes(np.eye(X.d), X.xy)[0]
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    return scipy.linalg.orthogonal_procrustes(X, Y)[0]


def symmetric_orthogonal(X, Y=None) -> np.ndarray:
    """Best self-inverse map: W = argmin ||X W - Y||_F^2 over W = W^T, W^2 = I.

    Derivation.  Such W are orthogonal, so ||X W - Y||^2 = ||X||^2 + ||Y||^2 - 2 tr(W^T M) with
    M = X^T Y, and since W is symmetric, tr(W M) = tr(W S) with S = (M + M^T) / 2 (the
    antisymmetric part A of M contributes tr(W A) = 0).  Every symmetric orthogonal W has
    eigenvalues +-1, so by von Neumann's trace inequality tr(W S) <= sum_i |lambda_i(S)|.  With
    the eigendecomposition S = U diag(lambda) U^T the bound is reached by

        W = U diag(sign(lambda)) U^T,

    the orthogonal polar factor of S (sign(0) taken as +1).  The number of -1 eigenvalues is the
    dimension of the subspace the map reflects.  Input: arrays ``X``, ``Y`` [n, d] or
    :class:`PairStats`.
    """
    M = _stats(X, Y).xy
    S = 0.5 * (M + M.T)
    lam, U = np.linalg.eigh(S)
    sign = np.where(lam < 0, -1.0, 1.0)
    W = (U * sign) @ U.T
    return 0.5 * (W + W.T)  # exactly symmetric despite rounding


def linear_map(X, Y=None, ridge: float = 0.0, fit_intercept: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """Least squares / ridge: (W, b) = argmin ||X W + 1 b^T - Y||_F^2 + ridge * n * ||W||_F^2.

    Without intercept: W = (X^T X + ridge n I)^{-1} X^T Y, b = 0.  With intercept the same on
    centred data: C_xx = X^T X - n mu_x mu_x^T, C_xy = X^T Y - n mu_x mu_y^T,
    W = (C_xx + ridge n I)^{-1} C_xy, b = mu_y - mu_x W.  ``ridge`` is per pair (scaled by n) so
    its meaning does not depend on the number of pairs.  With ridge = 0 the normal equations are
    solved by least squares (``scipy.linalg.lstsq``), which also handles a singular X^T X.
    Returns W [d, d] and b [d].
    """
    st = _stats(X, Y)
    if st.n == 0:
        raise ValueError("no pairs to fit")
    xx, xy = st.xx, st.xy
    mu_x, mu_y = st.sx / st.n, st.sy / st.n
    if fit_intercept:
        xx = xx - st.n * np.outer(mu_x, mu_x)
        xy = xy - st.n * np.outer(mu_x, mu_y)
    A = xx + ridge * st.n * np.eye(st.d)
    if ridge > 0:
        W = scipy.linalg.solve(A, xy, assume_a="pos")
    else:
        W = scipy.linalg.lstsq(A, xy)[0]
    b = mu_y - mu_x @ W if fit_intercept else np.zeros(st.d)
    return W, b


def fit_operator(kind: str, stats: PairStats, ridge: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of operator ``kind``: ``procrustes``, ``symmetric`` (symmetric orthogonal),
    ``linear`` (least squares through the origin) or ``affine`` (with intercept).  Orthogonal
    kinds have b = 0."""
    if kind == "procrustes":
        return procrustes(stats), np.zeros(stats.d)
    if kind == "symmetric":
        return symmetric_orthogonal(stats), np.zeros(stats.d)
    if kind == "linear":
        return linear_map(stats, ridge=ridge, fit_intercept=False)
    if kind == "affine":
        return linear_map(stats, ridge=ridge, fit_intercept=True)
    raise ValueError(f"unknown operator kind {kind!r} (procrustes, symmetric, linear, affine)")




def apply_map(X: np.ndarray, W: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Y_hat = X W + b for X [..., d] (works on token grids [N, P, d] as well)."""
    out = np.asarray(X) @ W
    return out + b if b is not None else out


# ---------------------------------------------------------------------------------------------
# evaluation


class R2:
    """Streaming coefficient of determination, pooled over all coordinates:

        R^2 = 1 - sum_i ||y_i - yhat_i||^2 / sum_i ||y_i - mu_y||^2,   mu_y = mean_i y_i,

    i.e. 1 minus the residual sum of squares over the total variance of Y (the variance-weighted
    average of the per-dimension R^2).  R^2 = 1: perfect; 0: no better than predicting the mean
    feature; negative: worse.  ``update(Y, Y_hat)`` with rows [m, d]; ``value``.
    """

    def __init__(self):
        self.n = 0
        self.sse = 0.0
        self.sy = None
        self.syy = 0.0

    def update(self, Y: np.ndarray, Y_hat: np.ndarray) -> "R2":
        Y = np.asarray(Y, dtype=np.float64).reshape(-1, np.shape(Y)[-1])
        Y_hat = np.asarray(Y_hat, dtype=np.float64).reshape(Y.shape)
        self.n += len(Y)
        self.sse += float(np.square(Y - Y_hat).sum())
        self.sy = Y.sum(0) if self.sy is None else self.sy + Y.sum(0)
        self.syy += float(np.square(Y).sum())
        return self

    @property
    def value(self) -> float:
        if not self.n:
            return float("nan")
        sst = self.syy - float(self.sy @ self.sy) / self.n
        return 1.0 - self.sse / sst if sst > 0 else float("nan")


def r2_score(Y: np.ndarray, Y_hat: np.ndarray) -> float:
    """R^2 of predictions ``Y_hat`` for ``Y`` [..., d] (see :class:`R2`)."""
    return R2().update(Y, Y_hat).value


def eigen_spectrum(W: np.ndarray) -> np.ndarray:
    """Eigenvalues of W [d, d] (complex [d]), sorted by angle then modulus.

    An orthogonal W has all |lambda| = 1; a symmetric orthogonal one has lambda in {-1, +1}; an
    operator for an involution T (T(T(x)) = x, like the R<->B swap) should have W^2 ~ I and thus
    eigenvalues near +-1.
    """
    lam = np.linalg.eigvals(np.asarray(W, dtype=np.float64))
    return lam[np.lexsort((np.abs(lam), np.angle(lam)))]


def spectrum_summary(lam: np.ndarray, tol: float = 0.1) -> dict[str, float]:
    """Summary of eigenvalues ``lam``: how many lie within ``tol`` of +1 and of -1, the share
    that does, mean |lambda| and mean |Im lambda| (0 for a real spectrum)."""
    lam = np.asarray(lam)
    near_p = int(np.sum(np.abs(lam - 1) < tol))
    near_m = int(np.sum(np.abs(lam + 1) < tol))
    return {
        "n": int(len(lam)),
        "near_plus_one": near_p,
        "near_minus_one": near_m,
        "share_near_pm1": (near_p + near_m) / max(len(lam), 1),
        "mean_modulus": float(np.mean(np.abs(lam))),
        "mean_abs_imag": float(np.mean(np.abs(lam.imag))),
    }


def involution_error(W: np.ndarray) -> float:
    """||W W - I||_F / sqrt(d): 0 for a self-inverse map."""
    W = np.asarray(W, dtype=np.float64)
    return float(np.linalg.norm(W @ W - np.eye(len(W))) / np.sqrt(len(W)))
