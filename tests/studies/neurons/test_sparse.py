"""Sparse text decomposition: OMP recovers a direction built from known texts, picks exactly k,
and bad k is named."""

import numpy as np
import pytest

from cliplens.studies.neurons.sparse import (sparse_codes, sparse_decompose, text_dictionary,
                                             top_texts)


def test_a_direction_built_from_three_texts_is_recovered():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((200, 32))
    dic = text_dictionary(emb)
    np.testing.assert_allclose(np.linalg.norm(dic, axis=1), 1.0)
    np.testing.assert_allclose(dic.mean(0) * 0, 0)
    truth = {5: 2.0, 17: -1.0, 123: 0.5}
    y = sum(w * dic[j] for j, w in truth.items())[None]
    codes = sparse_codes(y, dic, k=3)
    assert {j for j in np.flatnonzero(codes[0])} == set(truth)
    for j, w in truth.items():
        assert codes[0, j] == pytest.approx(w, abs=1e-9)
    texts = [f"t{i}" for i in range(200)]
    assert top_texts(sparse_decompose(y, dic, 3), texts)[0] == [("t5", pytest.approx(2.0)),
                                             ("t17", pytest.approx(-1.0)),
                                             ("t123", pytest.approx(0.5))]


def test_exactly_k_texts_and_the_residual_shrinks():
    rng = np.random.default_rng(1)
    dic = text_dictionary(rng.standard_normal((300, 24)))
    y = rng.standard_normal((5, 24))
    errs = []
    for k in (1, 4, 16):
        codes = sparse_codes(y, dic, k)
        assert ((codes != 0).sum(1) == k).all()
        errs.append(np.linalg.norm(y - codes @ dic, axis=1).mean())
    assert errs[0] > errs[1] > errs[2]


def test_column_normalisation_is_the_published_option():
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((50, 8)) * np.arange(1, 9)
    dic = text_dictionary(emb, "columns")
    np.testing.assert_allclose(np.linalg.norm(dic, axis=0), 1.0)
    with pytest.raises(ValueError, match="normalise must be one of"):
        text_dictionary(emb, "rows")


def test_bad_k_is_named():
    dic = text_dictionary(np.random.default_rng(3).standard_normal((10, 6)))
    with pytest.raises(ValueError, match="text set has 10"):
        sparse_codes(np.ones((1, 6)), dic, 11)
    with pytest.raises(ValueError, match="width 6"):
        sparse_codes(np.ones((1, 6)), dic, 7)
    with pytest.raises(ValueError, match="texts of another model"):
        sparse_codes(np.ones((1, 5)), dic, 2)


@pytest.mark.parametrize("normalise", ["atoms", "columns"])
def test_batched_omp_has_sklearns_supports_and_weights(normalise):
    rng = np.random.default_rng(4)
    dic = text_dictionary(rng.standard_normal((500, 64)), normalise)
    y = rng.standard_normal((20, 64))
    batched = sparse_codes(y, dic, 16, method="batched")
    ref = sparse_codes(y, dic, 16, method="sklearn")
    assert ((batched != 0) == (ref != 0)).all()
    np.testing.assert_allclose(batched, ref, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="method must be"):
        sparse_codes(y, dic, 2, method="lars")


def test_one_run_gives_every_smaller_k():
    """The weights kept after n steps equal an OMP run with k = n, and directions() rebuilds
    the approximation from support and weights."""
    rng = np.random.default_rng(5)
    dic = text_dictionary(rng.standard_normal((300, 32)))
    y = rng.standard_normal((6, 32))
    full = sparse_decompose(y, dic, 12, steps=(1, 4, 8))
    for n in (1, 4, 8):
        alone = sparse_decompose(y, dic, n)
        np.testing.assert_array_equal(full.support[:, :n], alone.support)
        np.testing.assert_allclose(full.at[n], alone.weights, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(full.directions(dic, n), sparse_codes(y, dic, n) @ dic,
                                   rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="need method='batched'"):
        sparse_decompose(y, dic, 4, method="sklearn", steps=(2,))
