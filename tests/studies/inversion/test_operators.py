"""Colour operators in feature space: each fitter recovers a known map from noisy pairs, and the
symmetric orthogonal fit is the exact least-squares optimum over self-inverse maps."""

import numpy as np
import pytest
import scipy.linalg
from scipy.stats import ortho_group

from cliplens.studies.inversion import operators as ops

D = 24


def _pairs(W, n=4000, noise=0.05, seed=0, b=None):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, W.shape[0]))
    Y = X @ W + noise * rng.standard_normal((n, W.shape[1]))
    return X, (Y + b if b is not None else Y)


def _reflection(k, seed=1):
    """A random symmetric orthogonal map: reflect a random k-dimensional subspace."""
    U = ortho_group.rvs(D, random_state=seed)
    return (U * np.r_[-np.ones(k), np.ones(D - k)]) @ U.T


def test_procrustes_recovers_a_rotation_from_noisy_pairs():
    Q = ortho_group.rvs(D, random_state=3)
    X, Y = _pairs(Q)
    W = ops.procrustes(X, Y)
    assert np.allclose(W.T @ W, np.eye(D), atol=1e-10)
    assert np.abs(W - Q).max() < 0.01
    # the streaming (sufficient statistics) route gives the same answer
    assert np.allclose(ops.procrustes(ops.PairStats.from_arrays(X, Y, chunk=333)), W, atol=1e-10)


def test_symmetric_orthogonal_recovers_a_reflection():
    Q = _reflection(7)
    X, Y = _pairs(Q)
    W = ops.symmetric_orthogonal(X, Y)
    assert np.allclose(W, W.T) and np.allclose(W @ W, np.eye(D), atol=1e-10)
    assert np.abs(W - Q).max() < 0.01
    lam = np.sort(np.linalg.eigvalsh(W))
    assert np.allclose(lam, np.r_[-np.ones(7), np.ones(D - 7)], atol=1e-8)
    # Procrustes finds it too, with eigenvalues near +-1
    lam_p = ops.eigen_spectrum(ops.procrustes(X, Y))
    s = ops.spectrum_summary(lam_p, tol=0.05)
    assert (s["near_minus_one"], s["near_plus_one"]) == (7, D - 7)


def test_symmetric_orthogonal_is_the_least_squares_optimum_over_self_inverse_maps():
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((300, D)), rng.standard_normal((300, D))  # no true map at all
    W = ops.symmetric_orthogonal(X, Y)
    best = np.linalg.norm(X @ W - Y)
    for seed in range(200):  # random reflections of every rank are never better
        k = int(rng.integers(0, D + 1))
        V = _reflection(k, seed=100 + seed)
        assert np.linalg.norm(X @ V - Y) >= best - 1e-9
    # nor are nearby self-inverse maps: the polar factor of a symmetric matrix W + E is
    # symmetric orthogonal, and for small symmetric E it lies next to W
    for _ in range(50):
        S = rng.standard_normal((D, D)) * 0.05
        V = scipy.linalg.polar(W + (S + S.T) / 2)[0]
        assert np.allclose(V, V.T, atol=1e-10) and np.allclose(V @ V, np.eye(D), atol=1e-10)
        assert np.linalg.norm(X @ V - Y) >= best - 1e-9


def test_linear_map_recovers_a_known_matrix_and_intercept():
    rng = np.random.default_rng(7)
    A = rng.standard_normal((D, D)) / np.sqrt(D)
    b = rng.standard_normal(D)
    X, Y = _pairs(A, noise=0.01, b=b)
    W, b0 = ops.linear_map(X, Y - b)
    assert np.abs(W - A).max() < 0.01 and np.all(b0 == 0)
    W, b1 = ops.linear_map(X, Y, fit_intercept=True)
    assert np.abs(W - A).max() < 0.01 and np.abs(b1 - b).max() < 0.01
    # equals numpy's least squares on the design matrix [X, 1]
    coef = np.linalg.lstsq(np.c_[X, np.ones(len(X))], Y, rcond=None)[0]
    assert np.allclose(W, coef[:-1], atol=1e-8) and np.allclose(b1, coef[-1], atol=1e-8)
    # ridge shrinks towards zero, as the closed form says
    Wr, _ = ops.linear_map(X, Y - b, ridge=10.0)
    assert np.allclose(Wr, np.linalg.solve(X.T @ X + 10.0 * len(X) * np.eye(D), X.T @ (Y - b)))
    assert np.linalg.norm(Wr) < np.linalg.norm(W)


def test_r2_matches_its_definition_and_streams():
    rng = np.random.default_rng(9)
    Y = rng.standard_normal((500, 6)) * np.arange(1, 7)
    Yh = Y + rng.standard_normal(Y.shape)
    expect = 1 - ((Y - Yh) ** 2).sum() / ((Y - Y.mean(0)) ** 2).sum()
    assert ops.r2_score(Y, Yh) == pytest.approx(expect, rel=1e-12)
    acc = ops.R2()
    for a in range(0, 500, 77):
        acc.update(Y[a:a + 77], Yh[a:a + 77])
    assert acc.value == pytest.approx(expect, rel=1e-10)
    assert ops.r2_score(Y, Y) == 1.0
    assert ops.r2_score(Y, np.broadcast_to(Y.mean(0), Y.shape)) == pytest.approx(0.0, abs=1e-12)
    # works on token grids [N, P, d]
    assert ops.r2_score(Y.reshape(50, 10, 6), Yh.reshape(50, 10, 6)) == pytest.approx(expect)


def test_fit_operator_kinds_and_involution_error():
    Q = _reflection(3)
    X, Y = _pairs(Q, noise=0.0)
    st = ops.PairStats.from_arrays(X, Y)
    for kind in ops.OPERATOR_KINDS:
        W, b = ops.fit_operator(kind, st)
        assert np.allclose(ops.apply_map(X, W, b), Y, atol=1e-8), kind
        assert ops.involution_error(W) < 1e-8
    with pytest.raises(ValueError, match="unknown operator"):
        ops.fit_operator("rotation", st)
