"""Study 001 analyses: term grouping, ablation curves, probes, factor naming, maps, neighbours."""

import numpy as np
import pytest

from cliplens.core.segmentation import centre_prior
from cliplens.core.factors import named_factor
from cliplens.core.text.textsets import text_factors, toy_descriptions, toy_words
from cliplens.core.text.zeroshot import class_direction
from cliplens.studies.heads import analysis as ha
from cliplens.studies.heads.textspan import textspan


def _onehot_classifier(rng, K, D):
    q, _ = np.linalg.qr(rng.normal(size=(D, K)))
    return q  # [D, K] orthonormal columns


def test_split_terms_sums_to_the_embedding():
    rng = np.random.default_rng(0)
    N, L, H, D = 7, 3, 2, 5
    dec = {"heads": rng.normal(size=(N, L, H, D)), "mlps": rng.normal(size=(N, L, D)),
           "embed": rng.normal(size=(N, D)), "attn_bias": rng.normal(size=(N, L, D)),
           "rest": rng.normal(size=(N, D)), "bias": rng.normal(size=(N, D)),
           "pool_mlp": rng.normal(size=(N, D))}
    z = sum(dec[k].reshape(N, -1, D).sum(1) for k in dec)
    heads, mlps, other = ha.split_terms(dec)
    np.testing.assert_allclose(heads.sum((1, 2)) + mlps.sum(1) + other, z, atol=1e-5)


def test_ablation_curves_find_the_layer_and_the_cls_part_that_carry_the_class():
    rng = np.random.default_rng(1)
    N, L, H, D, K = 300, 3, 2, 8, 4
    labels = rng.integers(0, K, N)
    W = _onehot_classifier(rng, K, D)
    heads_cls = rng.normal(size=(N, L, H, D)) * 0.01
    heads_cls[:, 1, 0] += 2.0 * W.T[labels]       # layer 1's CLS->CLS part carries the class
    heads = heads_cls + rng.normal(size=(N, L, H, D)) * 0.01
    mlps = rng.normal(size=(N, L, D)) * 0.01
    other = np.zeros((N, D))
    c = ha.ablation_curves(heads, mlps, other, W, labels, heads_cls=heads_cls)
    assert set(c) == {"attention", "mlp", "cls_to_cls"}
    assert c["attention"][0] == c["attention"][1] == 1.0     # layer 0 ablated: no change
    assert c["attention"][2] < 0.5 and c["cls_to_cls"][2] < 0.5
    np.testing.assert_array_equal(c["mlp"], 1.0)


def test_group_accuracies():
    pred = np.array([0, 0, 1, 1, 1, 0])
    labels = np.array([0, 0, 1, 0, 1, 1])
    groups = np.array([0, 0, 1, 1, 2, 2])
    assert ha.group_accuracies(pred, labels, groups) == {0: 1.0, 1: 0.5, 2: 0.5}


def test_probe_finds_the_factor_a_head_encodes():
    rng = np.random.default_rng(2)
    N, D = 600, 6
    y = {"colour": rng.integers(0, 4, N), "size": rng.integers(0, 2, N)}
    means = rng.normal(size=(4, D)) * 3
    C = means[y["colour"]] + rng.normal(size=(N, D))          # encodes colour, not size
    fit = {k: v[:400] for k, v in y.items()}
    test = {k: v[400:] for k, v in y.items()}
    s = ha.probe_factors(C[:400], fit, C[400:], test)
    assert s["colour"]["score"] > 0.8
    assert abs(s["size"]["score"]) < 0.2
    assert s["size"]["chance"] >= 0.5


def test_text_factors_and_named_factor():
    assert text_factors("a circle on a pale backdrop") == {"shape", "background"}
    assert text_factors("pale") == {"colour"}
    assert text_factors("a big crimson disc at the left side") == {
        "size", "colour", "shape", "position"}
    assert text_factors("string") == set()
    assert all(text_factors(t) for t in toy_words() + toy_descriptions())
    texts = ["a red circle", "crimson", "a green object", "a circle on the left"]
    assert named_factor(texts, text_factors, top=3) == "colour"
    assert named_factor(["a circle", "red"], text_factors) == "shape"    # tie: earliest
    assert named_factor(["zzz"], text_factors) is None


def test_token_maps_and_class_direction():
    rng = np.random.default_rng(3)
    B, L, H, g, D, K = 2, 2, 3, 4, 5, 3
    tokens = rng.normal(size=(B, L, H, 1 + g * g, D))
    W = rng.normal(size=(D, K))
    d = class_direction(W, np.array([0, 2]))
    np.testing.assert_allclose(d[1], W[:, 2] - W.mean(1))
    maps = ha.token_maps(tokens, d, has_cls=True)
    assert maps.shape == (B, L, H, g, g)
    np.testing.assert_allclose(maps[1, 0, 2, 1, 3], tokens[1, 0, 2, 1 + 1 * g + 3] @ d[1])
    with pytest.raises(ValueError, match="square"):
        ha.token_maps(tokens[:, :, :, :6], d, has_cls=True)
    prior = centre_prior(8)
    assert prior.argmax() in (27, 28, 35, 36) and prior.min() > 0


def test_nearest_neighbours_stay_in_the_cluster():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(3, 10)) * 5
    cluster = np.repeat(np.arange(3), 20)
    C = centres[cluster] + rng.normal(size=(60, 10)) + 100.0   # a shared offset, removed
    nn = ha.nearest_neighbours(C, [0, 25, 59], k=5)
    assert nn.shape == (3, 5)
    for q, row in zip([0, 25, 59], nn):
        assert q not in row and (cluster[row] == cluster[q]).all()
    # with_similarity: the same rows and their cosines after centring, most similar first
    same, sims = ha.nearest_neighbours(C, [0, 25, 59], k=5, with_similarity=True)
    np.testing.assert_array_equal(same, nn)
    X = C - C.mean(0)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_allclose(sims, np.take_along_axis(X[[0, 25, 59]] @ X.T, nn, axis=1),
                               atol=1e-12)
    assert np.all(np.diff(sims, axis=1) <= 0) and np.all(sims <= 1 + 1e-12)


def test_textspan_projection_of_other_images():
    rng = np.random.default_rng(5)
    N, D, M = 200, 12, 40
    R = rng.normal(size=(M, D))
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    C = rng.normal(size=(N, 3)) @ R[:3] * 2 + 0.5 + rng.normal(size=(N, D)) * 0.01
    res = textspan(C, R, n_texts=3, n_components=None)
    np.testing.assert_allclose(res.basis @ res.basis.T, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(res.project(C), res.reconstruction, atol=1e-9)
    new = rng.normal(size=(50, 3)) @ R[:3] + 0.5
    np.testing.assert_allclose(res.project(new), new, atol=0.05)
    # one text explains only its own direction
    one = res.project(new, n_texts=1) - res.mean
    np.testing.assert_allclose(one, np.outer((new - res.mean) @ res.basis[0], res.basis[0]),
                               atol=1e-9)


def test_balanced_rows_remove_the_label_attribute_correlation():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 2, 1000)
    attr = np.where(rng.random(1000) < 0.95, labels, 1 - labels)   # 95 % agreement
    rows = ha.balanced_rows(labels, attr)
    y, a = labels[rows], attr[rows]
    counts = {(i, j): int(((y == i) & (a == j)).sum()) for i in (0, 1) for j in (0, 1)}
    assert len(set(counts.values())) == 1 and min(counts.values()) >= 2
    assert abs(np.corrcoef(y, a)[0, 1]) < 1e-12
    assert len(np.unique(rows)) == len(rows)
    with pytest.raises(ValueError, match="fewer than 2"):
        ha.balanced_rows(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 1]))

