"""Means, top-k norms and first components: the out-of-core two-pass path and the pairs' closed
form equal the brute-force SVD of the materialised array."""

import numpy as np
import pytest

from cliplens.studies.neurons.components import (array_blocks, components, components_dense,
                                                 pair_components)


def cos_rows(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def brute(reps, k):
    """The published algorithm, unit by unit, written out with numpy's SVD."""
    mean = reps.mean(0)
    out = []
    for u in range(reps.shape[1]):
        c = reps[:, u] - mean[u]
        top = np.argsort(np.linalg.norm(c, axis=-1))[-k:]
        x = c[top]
        v = np.linalg.svd(x, full_matrices=False)[2][0]
        v = v if (x @ v > 0).sum() > k // 2 else -v
        out.append((mean[u], v, np.sort(np.linalg.norm(c, axis=-1))[-k:][::-1], top[::-1]))
    return out


@pytest.mark.parametrize("block_rows", [1, 7, 40])
def test_two_passes_equal_the_brute_force(block_rows):
    rng = np.random.default_rng(0)
    reps = rng.standard_normal((40, 6, 5)) * rng.uniform(0.5, 3, (1, 6, 1)) + rng.normal(
        size=(1, 6, 5))
    got = components(array_blocks(reps, block_rows), k=5)
    ref = components_dense(reps, k=5)
    for u, (mean, v, norms, top) in enumerate(brute(reps, 5)):
        np.testing.assert_allclose(got.mean[u], mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got.top_norms[u], norms, rtol=1e-12)
        np.testing.assert_array_equal(got.top_images[u], top)
        assert cos_rows(got.pc0[u], v) >= 0.9999
        assert cos_rows(ref.pc0[u], v) >= 0.9999
    assert got.n_images == 40 and got.pc0.shape == (6, 5) and got.top_norms.shape == (6, 5)


def test_the_sign_makes_most_projections_positive():
    """Unit 0: 20 images at +5, 10 at -4 on e0 (mean 2): the top 10 by centred norm are the
    -6 rows, so pc0 = -e0 makes their projections positive; unit 1 mirrors it: +e0."""
    rng = np.random.default_rng(1)
    n, d = 30, 4
    base = np.zeros((n, 2, d))
    base[:, 0, 0] = np.r_[np.full(20, 5.0), np.full(10, -4.0)] + rng.normal(0, .01, n)
    base[:, 1, 0] = -base[:, 0, 0]
    got = components(array_blocks(base, 8), k=10)
    assert got.pc0[0, 0] < -0.99 and got.pc0[1, 0] > 0.99, got.pc0
    assert set(got.top_images[0]) == set(range(20, 30))


@pytest.mark.parametrize("block_rows", [3, 50])
def test_pairs_closed_form_equals_the_materialised_svd(block_rows):
    rng = np.random.default_rng(2)
    n, h, c, d = 50, 3, 4, 6
    s = rng.standard_normal((n, h, c)) * 2 + rng.normal(size=(1, h, c))
    u = rng.standard_normal((h, c, d))
    u[1, 2] = 0.0                                               # a dead pair
    bias = rng.standard_normal(d)
    got = pair_components(array_blocks(s, block_rows), u, k=7, bias=bias)
    reps = (s[..., None] * u).reshape(n, h * c, d)
    ref = components_dense(reps, k=7)
    np.testing.assert_allclose(got.mean, ref.mean + bias / (h * c), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.top_norms, ref.top_norms, rtol=1e-10, atol=1e-12)
    live = np.linalg.norm(u.reshape(h * c, d), axis=1) > 0
    np.testing.assert_array_equal(got.top_images[live], ref.top_images[live])
    assert (cos_rows(got.pc0[live], ref.pc0[live]) >= 0.9999).all()
    assert np.all(got.pc0[~live] == 0)


def test_bad_k_is_named():
    reps = np.zeros((4, 2, 3))
    with pytest.raises(ValueError, match="top-k = 5 images asked, but only 4"):
        components(array_blocks(reps, 2), k=5)
    with pytest.raises(ValueError, match="top-k must be >= 1"):
        components_dense(reps, k=0)


def test_even_k_ties_take_the_positive_mass():
    """k = 4, scalars 4, -3, 2, -1, 0 (mean 0.4): the top 4 deviations 3.6, -3.4, 1.6, -1.4
    are two positive, two negative; their sum 0.4 > 0 gives +u, in both the SVD path and
    the pairs' closed form; the mirrored scalars give -u."""
    u = np.array([[[1.0, 0.0]]])
    for sign in (1.0, -1.0):
        s = sign * np.array([4.0, -3.0, 2.0, -1.0, 0.0])[:, None, None]   # [5, 1, 1]
        got = pair_components(array_blocks(s, 2), u, k=4)
        ref = components_dense((s[..., None] * u).reshape(5, 1, 2), k=4)
        assert got.pc0[0, 0] == sign and ref.pc0[0, 0] == pytest.approx(sign)
