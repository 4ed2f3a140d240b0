"""Replacement and ablation of units: the algebra of keeping, mean-ablating and replacing by a
direction, for vectors and for pairs' scalars."""

import numpy as np
import pytest

from cliplens.studies.neurons.analysis import (ABLATE, KEEP, REPLACE, changed_pairs,
                                               changed_units, unit_mask)
from cliplens.studies.neurons.components import array_blocks, pair_components


def test_keeping_every_unit_is_their_sum_and_ablating_is_the_mean():
    rng = np.random.default_rng(0)
    reps = rng.standard_normal((12, 5, 4))
    mean = reps.mean(0)
    keep = np.full(5, KEEP)
    np.testing.assert_allclose(changed_units(array_blocks(reps, 5), mean, [(keep, None)])[0],
                               reps.sum(1))
    ablate = np.full(5, ABLATE)
    np.testing.assert_allclose(changed_units(array_blocks(reps, 5), mean, [(ablate, None)])[0],
                               np.broadcast_to(mean.sum(0), (12, 4)))
    mixed = np.array([KEEP, ABLATE, KEEP, ABLATE, ABLATE])
    want = reps[:, [0, 2]].sum(1) + mean[[1, 3, 4]].sum(0)
    np.testing.assert_allclose(changed_units(array_blocks(reps, 3), mean, [(mixed, None)])[0],
                               want)


def test_replacing_a_rank_one_unit_by_its_direction_is_exact():
    """A unit whose vectors all lie on one line (plus its mean) is unchanged by replacement
    on that line; a unit off the line loses its orthogonal part."""
    rng = np.random.default_rng(1)
    n, d = 20, 6
    line = rng.standard_normal(d)
    base = rng.standard_normal(d)
    reps = np.stack([base + rng.standard_normal((n, 1)) * line,
                     rng.standard_normal((n, d))], axis=1)              # [n, 2, d]
    mean = reps.mean(0)
    dirs = np.stack([line, np.eye(d)[0]])
    got = changed_units(array_blocks(reps, 7), mean, [(np.full(2, REPLACE), dirs)])[0]
    e0 = np.eye(d)[0]
    want = reps[:, 0] + mean[1] + ((reps[:, 1] - mean[1]) @ e0)[:, None] * e0
    np.testing.assert_allclose(got, want, atol=1e-12)
    with pytest.raises(ValueError, match="needs their directions"):
        changed_units(array_blocks(reps, 7), mean, [(np.full(2, REPLACE), None)])


def test_pairs_from_scalars_equal_the_materialised_vectors():
    rng = np.random.default_rng(2)
    n, h, c, d = 15, 2, 3, 5
    s = rng.standard_normal((n, h, c)) + 2
    u = rng.standard_normal((h, c, d))
    reps = (s[..., None] * u).reshape(n, h * c, d)
    comp = pair_components(array_blocks(s, 4), u, k=5)
    s_mean = s.reshape(n, -1).mean(0)
    texts = rng.standard_normal((h * c, d))                             # other directions
    changes = [(np.full(h * c, REPLACE), comp.pc0), (np.full(h * c, REPLACE), texts),
               (np.array([KEEP, ABLATE, REPLACE, KEEP, ABLATE, REPLACE]), texts)]
    wants = changed_units(array_blocks(reps, 4), comp.mean, changes)    # one pass, all changes
    gots = changed_pairs(array_blocks(s, 4), u, s_mean, changes)
    for got, want in zip(gots, wants):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    # pairs replaced by their first component: exactly their own sum (rank one)
    np.testing.assert_allclose(changed_pairs(array_blocks(s, 4), u, s_mean,
                                             [(np.full(h * c, REPLACE), comp.pc0)])[0],
                               reps.sum(1), rtol=1e-10, atol=1e-12)


def test_the_published_mask_keeps_the_top_tenth():
    top = np.arange(100, dtype=float)[:, None] * np.ones((1, 3))
    keep = unit_mask(top, 90)
    assert keep.sum() == 10 and keep[90:].all()
    assert unit_mask(top, 0).all()
    with pytest.raises(ValueError, match="percentile"):
        unit_mask(top, 101)


def test_activations_along_components_from_vectors_and_from_scalars():
    """A unit's activation is its centred term's projection on its (normalised) component;
    for pairs the scalars give the same numbers as the materialised vectors."""
    from cliplens.studies.neurons.analysis import pair_projections, unit_projections

    rng = np.random.default_rng(3)
    n, h, c, d = 11, 2, 3, 4
    s = rng.standard_normal((n, h, c))
    u = rng.standard_normal((h, c, d))
    reps = (s[..., None] * u).reshape(n, h * c, d)
    mean = reps.mean(0)
    dirs = 3.0 * rng.standard_normal((h * c, d))
    units = [4, 0, 5]
    want = np.stack([(reps[:, j] - mean[j]) @ (dirs[j] / np.linalg.norm(dirs[j]))
                     for j in units], 1)
    np.testing.assert_allclose(unit_projections(array_blocks(reps, 4), mean, dirs, units), want,
                               atol=1e-12)
    got = pair_projections(array_blocks(s, 5), u, s.reshape(n, -1).mean(0), dirs, units)
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_neuron_norms_sum_the_pairs_of_a_channel():
    from cliplens.studies.neurons.analysis import channel_norms

    rng = np.random.default_rng(4)
    n, h, c, d = 9, 3, 4, 5
    s = rng.standard_normal((n, h, c))
    u = rng.standard_normal((h, c, d))
    m = s.reshape(n, -1).mean(0)
    got = channel_norms(array_blocks(s, 2), u, m, [2, 0])
    centred = (s - s.mean(0))[..., None] * u                            # [n, h, c, d]
    want = np.linalg.norm(centred.sum(1)[:, [2, 0]], axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_units_naming_a_concept_keep_the_sign_of_their_text():
    from cliplens.studies.neurons.analysis import naming_units

    decs = [{"texts": ["a red circle", "golden", "big"], "weights": [0.9, -0.5, 0.1]},
            {"texts": ["a star", "a yellow object"], "weights": [0.2, 0.7]},
            {"texts": ["lemonade", "yellowish"], "weights": [1.0, 1.0]},    # not whole words
            {"texts": ["a", "b", "c", "Yellow"], "weights": [0.4, 0.3, 0.2, 0.1]}]
    assert naming_units(decs, ["yellow", "golden"], top=2) == [(0, -1.0), (1, 1.0)]
    assert naming_units(decs, ["yellow", "golden"], top=4) == [(0, -1.0), (1, 1.0), (3, 1.0)]
