"""Purity on constructed weights with known answers; pruning masks and scores."""

import numpy as np
import pytest
from scipy.stats import ortho_group

from cliplens.studies.purity.metrics import (keep_mask, neuron_scores, pruned_scores,
                                             purity_metrics)


def test_orthogonal_neurons_are_perfectly_pure():
    rows = ortho_group.rvs(8, random_state=0)[:6] * np.arange(1, 7)[:, None]  # any lengths
    m = purity_metrics(rows)
    assert m["mean_abs"] == pytest.approx(0, abs=1e-12) and m["max_abs"] < 1e-12
    assert m["purity_min"] > 1e10 and np.allclose(neuron_scores(rows), 0, atol=1e-12)


def test_duplicated_neurons_have_cosine_one_and_the_published_means_include_the_diagonal():
    rows = np.tile([[1.0, 2.0, -2.0]], (5, 1)) * np.array([[1], [2], [3], [4], [5]])
    ours, published = purity_metrics(rows), purity_metrics(rows, include_diagonal=True)
    assert ours["mean_abs"] == pytest.approx(1) and ours["signed_mean"] == pytest.approx(1)
    assert published["mean_abs"] == pytest.approx(4 / 5)  # n(n-1) of n² entries are 1
    assert published["max_abs"] == ours["max_abs"] == pytest.approx(1)
    assert ours["purity_mean"] == pytest.approx(1)
    assert published["purity_mean"] == pytest.approx(5 / 4)
    np.testing.assert_allclose(neuron_scores(rows), 4)


def test_a_known_cosine_matrix():
    # three unit neurons at 60, 90 and 150 degrees from the first, in the plane
    ang = np.radians([0, 60, 90])
    rows = np.c_[np.cos(ang), np.sin(ang)]
    C = np.array([[1, .5, 0], [.5, 1, np.cos(np.radians(30))], [0, np.cos(np.radians(30)), 1]])
    off = C[~np.eye(3, dtype=bool)]
    m = purity_metrics(rows)
    assert m["mean_abs"] == pytest.approx(np.abs(off).mean())
    assert m["median_abs"] == pytest.approx(np.median(np.abs(off)))
    assert m["std_abs"] == pytest.approx(np.abs(off).std())
    np.testing.assert_allclose(neuron_scores(rows), np.abs(C).sum(1) - 1)


def test_keep_masks():
    s = np.array([3.0, 1.0, 2.0, 5.0, 1.0])
    assert keep_mask(s, 2, "pure").tolist() == [False, True, False, False, True]
    assert keep_mask(s, 2, "impure").tolist() == [True, False, False, True, False]
    r = keep_mask(s, 3, "random", seed=1)
    assert r.sum() == 3 and (r == keep_mask(s, 3, "random", seed=1)).all()
    with pytest.raises(ValueError, match="k = 6 of 5"):
        keep_mask(s, 6, "pure")
    with pytest.raises(ValueError, match="mode"):
        keep_mask(s, 2, "best")
    with pytest.raises(ValueError, match="zero"):
        purity_metrics(np.zeros((3, 2)))


def test_pruning_keeps_what_carries_the_classes():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    x = rng.normal(scale=0.1, size=(100, 4))
    x[:, 0] += np.where(labels == 0, 1.0, -1.0)  # only dimension 0 separates the classes
    W = np.array([[1.0, -1.0], [0, 0], [0, 0], [0, 0]])
    keep0 = pruned_scores(x, W, labels, np.array([True, False, False, False]))
    drop0 = pruned_scores(x, W, labels, np.array([False, True, True, True]))
    assert keep0["accuracy"] == 1.0 and keep0["silhouette"] > 0.8
    assert drop0["accuracy"] == 0.5 and drop0["silhouette"] < 0.1
