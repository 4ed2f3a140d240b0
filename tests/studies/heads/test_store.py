"""Decomposition caches (study 001): sharded extraction gathers to the unsharded cache and sums
to the model's own embeddings; partial reads; an empty row range gives an empty cache; readers
refuse other models, missing arrays and missing shards; the job helpers that read caches back."""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cliplens.core.caches.rows import gather_shards, shard_bounds  # noqa: E402
from cliplens.core.io import ProvenanceError  # noqa: E402
from cliplens.studies.heads.store import (  # noqa: E402
    PER_LAYER,
    TERM_ARRAYS,
    chosen_heads,
    explained_heads,
    extract_decomposition,
    layer_sums,
    load_heads,
    read_decomposition,
    rows_of,
)
from tests.tiny_models import ArrayDataset, tiny_open_clip_vit, tiny_siglip  # noqa: E402








def _images(n=21):
    return np.random.default_rng(0).integers(0, 256, (n, 40, 40, 3), dtype=np.uint8)


def _term_sum(dec):
    """The sum of every term of a decomposition read [n, D] (heads summed over layers and heads,
    per-layer terms over layers)."""
    return sum(dec[k].sum(axis=tuple(range(1, dec[k].ndim - 1))) if dec[k].ndim > 2 else dec[k]
               for k in ("embed", "heads", "attn_bias", "mlps", "rest", "bias", "pool_mlp")
               if k in dec)


@pytest.mark.parametrize("kind", ["open_clip", "siglip"])
def test_sharded_decomposition_cache_gathers_and_sums_to_the_embeddings(tmp_path, kind):
    model = tiny_open_clip_vit() if kind == "open_clip" else tiny_siglip()
    ds = ArrayDataset(_images())
    whole = tmp_path / "whole.h5"
    extract_decomposition(model, ds, whole, layers=2, batch_size=4, progress=False)
    shards = []
    for i in range(3):
        a, b = shard_bounds(len(ds), 3, i, align=4)
        shards.append(tmp_path / "shards" / f"d.{i}-of-3.h5")
        shards[-1].parent.mkdir(exist_ok=True)
        extract_decomposition(model, ds, shards[-1], layers=2, start=a, stop=b, batch_size=4,
                              progress=False)
    gathered = tmp_path / "gathered.h5"
    gather_shards(shards, gathered)
    ref, got = read_decomposition(whole), read_decomposition(gathered, {"model": model.spec})
    assert got["provenance"]["layers"] == ref["provenance"]["layers"] == [1, 2]
    for k in ref:
        if k != "provenance":
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    assert got["heads"].shape[:3] == (21, 2, 2)
    np.testing.assert_array_equal(got["labels"], ds.labels)
    np.testing.assert_allclose(_term_sum(got), got["embeddings"], atol=2e-5)
    # partial reads: one layer's heads, and heads summed per layer, read layer by layer
    one = read_decomposition(gathered, arrays=("heads",), layers=[1])
    assert set(one) == {"heads", "index", "provenance"}
    np.testing.assert_array_equal(one["heads"][:, 0], ref["heads"][:, 1])
    sums = read_decomposition(gathered, arrays=("heads", "mlps"), sum_heads=True)
    np.testing.assert_allclose(sums["heads"], ref["heads"].sum(2), atol=1e-6)
    np.testing.assert_array_equal(sums["mlps"], ref["mlps"])
    with pytest.raises(KeyError, match="no arrays"):
        read_decomposition(gathered, arrays=("tokens",))
    with pytest.raises(ProvenanceError):
        read_decomposition(gathered, {"model": "open_clip:another"})
    (tmp_path / "shards" / "d.1-of-3.h5").unlink()
    with pytest.raises(Exception, match="does not exist"):
        read_decomposition(gathered)


@pytest.mark.parametrize("kind", ["open_clip", "siglip"])
def test_an_empty_row_range_gives_an_empty_cache_that_gathers(tmp_path, kind):
    """The shared row writer writes an empty shard (it used to be refused) with every array of
    a non-empty one, at zero rows; more shards than batches gather to the unsharded cache."""
    model = tiny_open_clip_vit() if kind == "open_clip" else tiny_siglip()
    ds = ArrayDataset(_images(9))
    empty = tmp_path / "empty.h5"
    prov = extract_decomposition(model, ds, empty, layers=2, start=5, stop=5, batch_size=4,
                                 progress=False)
    assert (prov["start"], prov["stop"], prov["rows"]) == (5, 5, 0)
    assert prov["layers"] == [1, 2] and prov["heads"] == 2
    assert prov["kind_decomposition"] == ("cls" if kind == "open_clip" else "attn_pool")
    whole = tmp_path / "whole.h5"
    extract_decomposition(model, ds, whole, layers=2, batch_size=4, progress=False)
    ref, got = read_decomposition(whole), read_decomposition(empty)
    assert set(got) == set(ref)
    for k in ref:
        if k != "provenance":
            assert got[k].shape == (0,) + ref[k].shape[1:], k
    # 9 rows in batches of 4 are 3 blocks: of 5 shards the last 2 are empty
    shards = []
    for i in range(5):
        a, b = shard_bounds(len(ds), 5, i, align=4)
        shards.append(tmp_path / "shards" / f"d.{i}-of-5.h5")
        shards[-1].parent.mkdir(exist_ok=True)
        extract_decomposition(model, ds, shards[-1], layers=2, start=a, stop=b, batch_size=4,
                              progress=False)
    assert read_decomposition(shards[-1])["index"].shape == (0,)
    gathered = tmp_path / "gathered.h5"
    gather_shards(shards, gathered)
    got = read_decomposition(gathered)
    for k in ref:
        if k != "provenance":
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_cache_arrays_and_the_job_readers(tmp_path):
    model = tiny_open_clip_vit()
    ds = ArrayDataset(_images(10))
    path = tmp_path / "dec.h5"
    extract_decomposition(model, ds, path, layers=[0, 2], start=2, stop=10, batch_size=4,
                          progress=False)
    ref = read_decomposition(path)
    # every term a CLS-pooled tower has, with the kept-layer axis where it has one
    assert set(ref) - {"provenance"} == (set(TERM_ARRAYS) - {"pool_mlp"}) | {
        "embeddings", "index", "labels"}
    for k in PER_LAYER:
        assert ref[k].shape[:2] == (8, 2), k
    np.testing.assert_array_equal(rows_of(ref), np.arange(2, 10))
    assert rows_of(ref).dtype == np.int64
    # layer_sums: every term, the heads summed per layer
    sums = layer_sums(path, model.spec)
    np.testing.assert_allclose(sums["heads"], ref["heads"].sum(2), atol=1e-6)
    np.testing.assert_allclose(sums["heads_cls"], ref["heads_cls"].sum(2), atol=1e-6)
    np.testing.assert_allclose(_term_sum(sums), ref["embeddings"], atol=2e-5)
    with pytest.raises(ProvenanceError):
        layer_sums(path, "open_clip:another")
    # load_heads: (block, head) pairs by block index, only their layers read
    heads, meta = load_heads(path, model.spec, [(2, 1), (0, 0)])
    assert set(heads) == {(2, 1), (0, 0)}
    np.testing.assert_array_equal(heads[(2, 1)], ref["heads"][:, 1, 1].astype(np.float64))
    np.testing.assert_array_equal(heads[(0, 0)], ref["heads"][:, 0, 0].astype(np.float64))
    assert heads[(0, 0)].dtype == np.float64
    np.testing.assert_array_equal(meta["index"], ref["index"])
    assert meta["provenance"]["layers"] == [0, 2]
    for bad in ([(1, 0)], [(2, 2)]):  # block 1 not kept; 2 heads only
        with pytest.raises(ValueError, match="not in the cache"):
            load_heads(path, model.spec, bad)
    with pytest.raises(ProvenanceError):
        load_heads(path, "open_clip:another", [(2, 1)])


def test_explained_heads():
    prov = {"layers": [2, 3, 5], "heads": 2}
    assert explained_heads(prov, 2) == [(3, 0), (3, 1), (5, 0), (5, 1)]
    assert len(explained_heads(prov, None)) == 6


def test_chosen_heads_listed_or_by_variance():
    ts = {"heads": [{"layer": 0, "head": 0, "variance": 1.0}, {"layer": 0, "head": 1,
                    "variance": 3.0}, {"layer": 1, "head": 0, "variance": 2.0}]}
    assert chosen_heads(ts, [], 2) == [(0, 1), (1, 0)]
    assert chosen_heads(ts, [[1, 0]], 2) == [(1, 0)]
