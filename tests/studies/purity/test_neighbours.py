"""Nearest TF-IDF neighbours for misalignment: the exact search and the inverted-file index."""

import numpy as np
import pytest
from scipy import sparse
from sklearn.preprocessing import normalize

from cliplens.studies.purity.misalign import misalign
from cliplens.studies.purity.neighbours import (exact_neighbours, ivf_neighbours, recall_at)


def _clustered_rows(n_groups=12, per=40, dim=60, seed=0):
    """Unit sparse rows in ``n_groups`` tight groups on disjoint coordinates: a row's nearest
    others are the rest of its group, by a margin."""
    rng = np.random.default_rng(seed)
    width = dim // n_groups
    rows, group = [], []
    for g in range(n_groups):
        base = np.zeros(dim)
        base[g * width:(g + 1) * width] = rng.uniform(1, 2, width)
        for _ in range(per):
            rows.append(base + np.r_[np.zeros(g * width), rng.uniform(0, .2, width),
                                     np.zeros(dim - (g + 1) * width)])
            group.append(g)
    return sparse.csr_matrix(normalize(np.array(rows))), np.array(group)


def test_ivf_probing_every_cell_is_the_exact_search():
    rows, _ = _clustered_rows()
    n = rows.shape[0]
    exact = exact_neighbours(rows, 11)(np.arange(n))
    exact = np.array([[j for j in r if j != i][:10] for i, r in enumerate(exact)])
    every = ivf_neighbours(rows, 10, clusters=6, probes=6)
    assert every.dtype == np.int32 and every.shape == (n, 10)
    assert recall_at(every, exact, 10) == 1.0
    sims = (rows @ rows.T).toarray()
    # nearest first, never the row itself
    got = np.take_along_axis(sims, every.astype(int), axis=1)
    assert (np.diff(got, axis=1) <= 1e-12).all() and (every != np.arange(n)[:, None]).all()


def test_ivf_finds_group_mates_with_one_probe_and_pads_small_cells():
    rows, group = _clustered_rows()
    near = ivf_neighbours(rows, 10, clusters=12, probes=1)
    assert (group[near] == group[:, None]).all()  # each cell is one group: found inside it
    # a cell of 40 rows holds 39 others: asking for 45 pads the rest with -1
    wide = ivf_neighbours(rows, 45, clusters=12, probes=1)
    assert (wide[:, 39:] == -1).all() and (wide[:, :39] >= 0).all()


def test_recall_counts_the_exact_top_k_found():
    exact = np.array([[1, 2, 3], [0, 2, 3]])
    assert recall_at(np.array([[3, 2, 1], [5, 6, 0]]), exact, 3) == pytest.approx((1 + 1 / 3) / 2)


def test_misalign_with_the_index_pairs_similar_captions():
    # 300 distinct captions in two groups that share no word across groups
    texts = [f"a {'red circle' if i % 2 else 'blue star'} tag{i:03d}" for i in range(300)]
    idx = np.arange(300)
    new, moved, _ = misalign(idx, texts, 0.3, seed=0, search="ivf", probes=2)
    assert len(moved) == 90
    assert sorted(new) == list(range(300))  # a permutation of the captions
    assert all(new[r] % 2 == idx[r] % 2 for r in moved)  # partners from the same group
    exact, _, _ = misalign(idx, texts, 0.3, seed=0)
    assert all(exact[r] % 2 == r % 2 for r in range(300))
    with pytest.raises(ValueError, match="unknown neighbour search 'annoy'"):
        misalign(idx, texts, 0.3, seed=0, search="annoy")


def test_partner_cosine_is_zero_for_captions_sharing_no_word_and_nan_when_none_moved():
    from cliplens.studies.purity.misalign import pair_cosine, tfidf_rows

    rows = tfidf_rows(["red circle", "blue star", "red circle left", "red circle right"])
    assert pair_cosine(rows, [0, 1], [1, 0]) == 0.0
    near = pair_cosine(rows, [2, 3], [3, 2])
    assert 0.3 < near < 1.0
    assert np.isnan(pair_cosine(rows, [], []))
    # misalignment by neighbours pairs captions closer than a random swap does
    many = [f"a {c} {s} tag{i:03d}" for i, (c, s) in
            enumerate(zip(np.resize(["red", "blue", "green"], 300),
                          np.resize(["circle", "star", "square", "heart"], 300)))]
    idx = np.arange(300)
    new, _, cosine = misalign(idx, many, 0.5, seed=0)
    shuffled = np.random.default_rng(0).permutation(300)
    assert cosine > pair_cosine(tfidf_rows(many), idx, shuffled) + 0.1
    assert np.isnan(misalign(idx, many, 0.0, seed=0)[2])


def test_every_cell_probes_itself_even_beside_a_twin_centre():
    from cliplens.studies.purity.misalign import tfidf_rows

    # two captions, 50 rows each, in six cells: centres have twins (equal cosine 1)
    rows = tfidf_rows(["red circle"] * 50 + ["blue star"] * 50)
    group = np.repeat([0, 1], 50)
    for seed in range(3):
        near = ivf_neighbours(rows, 5, clusters=6, probes=1, seed=seed)
        found = near >= 0
        assert found.all()  # every row finds 5 others: its own cell holds 49 or more
        assert (group[near] == group[:, None]).all()
