"""TextSpan, PC explanations and ablations: the mathematics on constructed heads."""

import numpy as np
import pytest

from cliplens.core.text.zeroshot import argmax_accuracy
from cliplens.studies.heads import textspan as ts
from cliplens.studies.heads.analysis import ablation_curves


def orthonormal(rng, n, d):
    q, _ = np.linalg.qr(rng.normal(size=(d, n)))
    return q.T  # [n, d]


def test_textspan_finds_the_texts_a_head_varies_along():
    rng = np.random.default_rng(0)
    D, N = 32, 400
    R = rng.normal(size=(50, D))
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    # the head writes along texts 7 (large variance) and 23 (smaller), plus a constant offset
    C = (np.outer(rng.normal(size=N) * 3.0, R[7]) + np.outer(rng.normal(size=N), R[23])
         + rng.normal(size=D))
    for scoring in ts.SCORINGS:
        res = ts.textspan(C, R, n_texts=2, n_components=None, scoring=scoring)
        assert list(res.indices) == [7, 23], scoring
        # two directions span C - mean exactly: the reconstruction is C
        np.testing.assert_allclose(res.reconstruction, C, atol=1e-9)
        assert res.explained[-1] == pytest.approx(1.0)
        assert res.variance[0] > res.variance[1]


def test_textspan_reconstruction_is_the_projection_on_the_chosen_span():
    rng = np.random.default_rng(1)
    C = rng.normal(size=(100, 16))
    R = rng.normal(size=(30, 16))
    res = ts.textspan(C, R, n_texts=5, n_components=None)
    assert len(set(res.indices)) == 5
    Q, _ = np.linalg.qr(R[res.indices].T)  # orthonormal basis of the chosen texts' span
    X = C - C.mean(0)
    np.testing.assert_allclose(res.reconstruction, X @ Q @ Q.T + C.mean(0), atol=1e-9)
    assert np.all(np.diff(res.explained) >= -1e-12)  # explained variance never decreases
    # every text: at least m = D picks reconstruct exactly
    full = ts.textspan(C, R, n_texts=16, n_components=None)
    np.testing.assert_allclose(full.reconstruction, C, atol=1e-8)


def test_textspan_projects_texts_on_the_heads_span_first():
    rng = np.random.default_rng(2)
    D = 20
    basis = orthonormal(rng, 3, D)
    C = rng.normal(size=(200, 3)) @ basis  # rank 3
    R = rng.normal(size=(40, D))
    res = ts.textspan(C, R, n_texts=3, n_components=3)
    np.testing.assert_allclose(res.reconstruction, C, atol=1e-8)


def test_normalized_scoring_is_not_fooled_by_a_long_text():
    # text 0 is a long vector at 60 degrees to the head's direction; text 1 is the direction
    D = 8
    e = np.eye(D)
    C = np.outer(np.linspace(-1, 1, 50), e[0])
    long = 10.0 * (0.5 * e[0] + np.sqrt(0.75) * e[1])
    R = np.stack([long, e[0]])
    assert ts.textspan(C, R, 1, None, "variance").indices[0] == 0  # published: raw dot product
    assert ts.textspan(C, R, 1, None, "normalized").indices[0] == 1


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="scoring"):
        ts.textspan(np.zeros((3, 4)), np.zeros((2, 4)), scoring="max")
    with pytest.raises(ValueError, match="share D"):
        ts.textspan(np.zeros((3, 4)), np.zeros((2, 5)))


def test_pc_explanations_is_a_pca_truncation_labelled_by_texts():
    rng = np.random.default_rng(3)
    D = 12
    basis = orthonormal(rng, 2, D)
    C = rng.normal(size=(300, 2)) * [5.0, 2.0] @ basis + 1e-4 * rng.normal(size=(300, D))
    R = np.concatenate([basis, -basis, rng.normal(size=(10, D)) * 0.01])
    pc = ts.pc_explanations(C, R, mass=0.99, k=1)
    assert pc.rank == 2  # the noise dimensions hold far less than 1 % of the singular-value sum
    # the first component is labelled by basis[0] (top) and -basis[0] (bottom), up to sign
    assert {pc.top[0, 0], pc.bottom[0, 0]} == {0, 2}
    U, s, vt = np.linalg.svd(C - C.mean(0), full_matrices=False)
    r = pc.rank
    np.testing.assert_allclose(pc.reconstruction, (U[:, :r] * s[:r]) @ vt[:r] + C.mean(0),
                               atol=1e-9)
    assert 0.99 < pc.explained <= 1.0


def test_ablation_curve_and_replacement():
    rng = np.random.default_rng(4)
    N, L, H, D, K = 200, 3, 2, 8, 4
    labels = rng.integers(0, K, N)
    W = orthonormal(rng, K, D).T  # classifier [D, K]
    heads = rng.normal(size=(N, L, H, D)) * 0.01
    heads[:, 0, 1] += 2.0 * W.T[labels]  # only layer 0, head 1 carries the class
    mlps = rng.normal(size=(N, L + 1, D)) * 0.01
    rest = np.zeros((N, D))
    z = ts.embeddings_from_terms(heads, mlps, rest)
    np.testing.assert_allclose(z, heads.sum((1, 2)) + mlps.sum(1))
    curves = ablation_curves(heads, mlps[:, 1:], mlps[:, 0] + rest, W, labels)
    curve = curves["attention"]
    assert curve.shape == (L + 1,)
    assert curve[0] == 1.0 and max(curve[1:]) < 0.5  # ablating layer 0 destroys it
    np.testing.assert_array_equal(curves["mlp"], 1.0)  # the MLPs carry no class
    ab = ts.mean_ablate(heads, [True, False, False], axis=1)
    np.testing.assert_allclose(ab[:, 0], np.broadcast_to(heads[:, 0].mean(0), ab[:, 0].shape))
    np.testing.assert_array_equal(ab[:, 1:], heads[:, 1:])
    rep = ts.replace_heads(heads, {(0, 1): np.zeros((N, D))})
    assert argmax_accuracy(ts.embeddings_from_terms(rep, mlps), W, labels) < 0.5
    np.testing.assert_array_equal(rep[:, 0, 0], heads[:, 0, 0])
    with pytest.raises(ValueError, match="axis"):
        ts.mean_ablate(heads, [True] * N, axis=0)


def test_explain_head_summarises_textspan_and_the_pcs_and_reports_them():
    from cliplens.core.settings import TextSpanSettings

    rng = np.random.default_rng(5)
    D, N = 16, 300
    R = rng.normal(size=(20, D))
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    C = np.outer(rng.normal(size=N) * 3.0, R[4]) + np.outer(rng.normal(size=N), R[11]) + 0.5
    names = [f"text {i}" for i in range(len(R))]
    cfg = TextSpanSettings.from_dict({"n_texts": 2, "scoring": "variance", "pc_mass": 0.99,
                                      "pc_texts": 3})
    entry, res = ts.explain_head(C, R, names, cfg, n_components=None)
    ref = ts.textspan(C, R, 2, None, "variance")
    np.testing.assert_array_equal(res.indices, ref.indices)
    assert entry["texts"] == ["text 4", "text 11"] == res.texts(names)
    np.testing.assert_allclose(entry["scores"], ref.variance)
    np.testing.assert_allclose(entry["explained"], ref.explained)
    assert entry["explained"][-1] == pytest.approx(1.0)
    assert entry["variance"] == pytest.approx(((C - C.mean(0)) ** 2).sum(1).mean())
    pc = ts.pc_explanations(C, R, 0.99, 3)
    assert entry["pcs"]["rank"] == pc.rank == 2
    assert entry["pcs"]["explained"] == pytest.approx(pc.explained)
    assert len(entry["pcs"]["components"]) == 2
    for j, comp in enumerate(entry["pcs"]["components"]):
        assert comp["singular_value"] == pytest.approx(pc.singular_values[j])
        assert comp["top"] == [names[k] for k in pc.top[j]]
        assert comp["bottom"] == [names[k] for k in pc.bottom[j]]
    lines = ts.head_report("L3.H1", entry, cfg.pc_mass)
    assert lines[0].startswith("L3.H1") and "2 texts explain 100.0 %" in lines[0]
    assert "text 4" in lines[1] and "text 11" in lines[2]
    assert "99 %" in lines[3] and ": 2, 2 distinct top texts" in lines[3]
    assert lines[-1] == "" and [x.split(":")[0].strip() for x in lines[4:-1]] == ["PC1", "PC2"]
    # a head no text was chosen for says so
    empty = dict(entry, texts=[], scores=[], explained=[])
    assert ts.head_report("L0.H0", empty, 0.99)[0] == "L0.H0  (no text chosen)"


# A small fixed case and the picks of the published TextSpan on it, computed once (float32 and
# float64 agree) by a direct implementation of its definition: texts projected on the top
# right singular vectors of the uncentred head, head centred, argmax of the projections'
# standard deviation, both deflated.  With the span cut to 2 components the published loop
# picks a third text among scores of rounding noise: 6 in float64, 0 in float32.
PIN_C = np.array([[3, 1, 0, 2], [1, -2, 1, 0], [-2, 0, 3, 1], [0, 2, -1, -3], [2, 2, 2, 0],
                  [-1, 1, 0, 2], [1, -1, -2, 1]], dtype=float)
PIN_R = np.array([[1, 0, 1, 0], [0, 1, 0, -1], [1, 1, 0, 0], [0, 0, 1, 1], [2, -1, 0, 1],
                  [-1, 0, 2, 0], [1, 1, 1, 1], [0, 2, 1, 0]], dtype=float)
PUBLISHED_PICKS = {4: [4, 5, 7, 1], 2: [5, 4]}


@pytest.mark.parametrize("rank", [4, 2])
def test_textspan_picks_what_the_published_algorithm_picks(rank):
    res = ts.textspan(PIN_C, PIN_R, n_texts=4, n_components=rank)
    assert res.indices.tolist() == PUBLISHED_PICKS[rank]
    assert res.rank_stop == (rank == 2)  # the projected text set spans 2 directions


def test_textspan_stops_at_the_text_sets_rank():
    rng = np.random.default_rng(5)
    D, k = 24, 5
    R = rng.normal(size=(40, k)) @ rng.normal(size=(k, D))  # 40 texts spanning 5 directions
    C = rng.normal(size=(300, D))  # the head varies in every direction
    res = ts.textspan(C, R, n_texts=12, n_components=None)
    assert len(res.indices) == k and res.rank_stop
    Q, _ = np.linalg.qr(R.T)  # the texts' span, [D, k]
    X = C - C.mean(0)
    np.testing.assert_allclose(res.reconstruction, X @ Q[:, :k] @ Q[:, :k].T + C.mean(0),
                               atol=1e-8)
    assert not ts.textspan(C, R, n_texts=4, n_components=None).rank_stop  # asked for fewer


def test_pc_reconstruction_as_published_when_a_text_tops_two_components():
    """Centred head X = U diag(3, 2, 1) (V = I up to signs); the centred texts' top-1 on
    components 1 and 2 is the same text (1, 1, 0), on component 3 the text (0, 0, 1).  The
    published reconstruction projects on their span: by hand, a row (x1, x2, x3) becomes
    ((x1 + x2)/2, (x1 + x2)/2, x3), explaining 1 - 6.5/14 of the variance; the truncation
    keeps everything."""
    rng = np.random.default_rng(6)
    U, _ = np.linalg.qr(rng.normal(size=(8, 3)))
    U -= U.mean(0)  # centred columns keep X centred ...
    U, _ = np.linalg.qr(U)  # ... and orthonormal
    X = U * [3.0, 2.0, 1.0]
    mean = np.array([0.5, -1.0, 2.0])
    R = np.array([[1.0, 1.0, 0.0], [-1.0, -1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    pc = ts.pc_explanations(X + mean, R, mass=1.0, k=1)
    assert pc.rank == 3 and pc.distinct_labels == 2 and pc.label_rank == 2
    by_hand = np.c_[(X[:, 0] + X[:, 1]) / 2, (X[:, 0] + X[:, 1]) / 2, X[:, 2]] + mean
    np.testing.assert_allclose(pc.reconstruction, by_hand, atol=1e-10)
    assert pc.explained == pytest.approx(1 - 6.5 / 14) == pc.explained_published
    assert pc.explained_truncation == pytest.approx(1.0)
    trunc = ts.pc_explanations(X + mean, R, mass=1.0, k=1, reconstruction="truncation")
    np.testing.assert_allclose(trunc.reconstruction, X + mean, atol=1e-10)
    with pytest.raises(ValueError, match="reconstruction"):
        ts.pc_explanations(X, R, reconstruction="pca")


def test_pc_components_carry_a_fixed_sign():
    """Which texts top a component depends on its sign; LAPACK leaves it arbitrary, so each
    component is signed with its largest-magnitude entry positive: negating the head's data
    gives the same components and the same labels."""
    rng = np.random.default_rng(3)
    C = rng.normal(size=(50, 6)) * [5, 4, 3, 2, 1, 0.5]
    R = rng.normal(size=(30, 6))
    pc = ts.pc_explanations(C, R, mass=0.9, k=2)
    V = pc.components
    assert (V[np.arange(len(V)), np.abs(V).argmax(1)] > 0).all()
    neg = ts.pc_explanations(-C, R, mass=0.9, k=2)
    np.testing.assert_allclose(neg.components, V, atol=1e-10)
    assert (neg.top == pc.top).all()
