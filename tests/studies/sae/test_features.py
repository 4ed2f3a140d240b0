"""Per-feature summaries in one pass equal their whole-matrix definitions."""

import numpy as np
import pytest

from cliplens.studies.sae.features import activation_histograms, collage, top_activations


def test_top_activations_equal_a_sort_of_the_whole_matrix():
    rng = np.random.default_rng(0)
    z = np.maximum(rng.standard_normal((57, 6)), 0)
    z[:, 5] = 0.0                                         # a dead feature: ties everywhere
    blocks = [(a, z[a:a + 10]) for a in range(0, 57, 10)]
    vals, rows = top_activations(blocks, 4)
    for j in range(6):
        want = np.lexsort((np.arange(57), -z[:, j]))[:4]  # largest first, earlier row on ties
        np.testing.assert_array_equal(rows[j], want)
        np.testing.assert_allclose(vals[j], z[want, j])
    vals, rows = top_activations([(0, z[:2])], 3)          # fewer rows than k
    assert (rows[:, 2] == -1).all() and np.isneginf(vals[:, 2]).all()


def test_histograms_count_non_zero_activations_per_feature():
    rng = np.random.default_rng(1)
    z = np.maximum(rng.standard_normal((40, 3)), 0)
    edges = np.linspace(0, z.max(), 6)
    got = activation_histograms([z[:13], z[13:]], edges)
    for j in range(3):
        want, _ = np.histogram(z[z[:, j] != 0, j], edges)
        np.testing.assert_array_equal(got[j], want)


def test_collage_tiles_row_by_row():
    ims = [np.full((2, 2, 3), i, np.uint8) for i in range(5)]
    c = collage(ims, 3)
    assert c.shape == (6, 6, 3)
    assert c[0, 0, 0] == 0 and c[0, 2, 0] == 1 and c[2, 0, 0] == 3 and c[2, 2, 0] == 4
    assert c[4:, :, :].max() == 0 and c[2:4, 4:6].max() == 0        # missing tiles are black
    with pytest.raises(ValueError, match="one shape"):
        collage([ims[0], np.zeros((3, 3, 3), np.uint8)])
