"""Embedding caches: shard bounds, extraction, VDS gathering, provenance checks on read."""

import os
import shutil
import zlib

import h5py
import numpy as np
import pytest
import torch

from cliplens.core.caches.embeddings import extract_embeddings, open_cache
from cliplens.core.caches.rows import (
    ShardError,
    batch_bounds,
    gather_shards,
    shard_bounds,
)
from cliplens.core.data.base import ImageDataset, to_pil
from cliplens.core.io import COMPLETE_ATTR, IncompleteFileError, ProvenanceError
from cliplens.core.models.base import ClipModel

SIDE, DIM = 8, 16


class FakeDataset(ImageDataset):
    """``n`` random uint8 images with labels; records every block it is asked for."""

    def __init__(self, n=37, classes=3, seed=0, name="fake", split="test"):
        rng = np.random.default_rng(seed)
        self.arr = rng.integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8)
        self.labels = rng.integers(0, classes, n)
        self.classnames = [f"class{i}" for i in range(classes)]
        self.name, self.split, self.calls = name, split, []

    def __len__(self):
        return len(self.arr)

    def image(self, i):
        return to_pil(self.arr[i : i + 1])[0]

    def images(self, start, stop):
        self.calls.append((start, stop))
        return to_pil(self.arr[start:stop])


class FakeClip(ClipModel):
    """A deterministic 'CLIP': images -> a fixed integer linear map of the pixels (exact integer
    arithmetic, so a row's value cannot depend on its batch); texts -> the sum of fixed random
    vectors, one per word (seeded by the word's CRC32)."""

    library, family, image_size, embed_dim = "fake", "clip", SIDE, DIM

    def __init__(self, spec="fake:linear", seed=0):
        self.spec = spec
        g = torch.Generator().manual_seed(seed)
        self.model = torch.nn.Linear(1, 1)  # holds the device
        self.weight = torch.randint(-3, 4, (3 * SIDE * SIDE, DIM), generator=g)

    def preprocess(self, images):
        arr = np.stack([np.asarray(im.convert("RGB")) for im in images])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float()

    def encode_image(self, pixels, normalize=False):
        out = (pixels.round().long().flatten(1) @ self.weight).double() / 1000.0
        out = out.float()
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out

    def encode_text(self, texts, normalize=False):
        vecs = []
        for t in texts:
            v = torch.zeros(DIM)
            for w in t.split():
                g = torch.Generator().manual_seed(zlib.crc32(w.encode()))
                v += torch.randn(DIM, generator=g)
            vecs.append(v)
        out = torch.stack(vecs)
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out

    @property
    def vision_blocks(self):
        return []


def expected_rows(model, ds, dtype):
    with torch.inference_mode():
        return model.encode_image(model.preprocess(ds.images(0, len(ds)))).numpy().astype(dtype)


def sharded(tmp, model, ds, n_shards, dtype="float16", batch_size=5, folder="cache", align=1):
    paths = []
    for i in range(n_shards):
        a, b = shard_bounds(len(ds), n_shards, i, align=align)
        p = tmp / folder / "shards" / f"embeddings.{i}-of-{n_shards}.h5"
        extract_embeddings(model, ds, p, start=a, stop=b, batch_size=batch_size, dtype=dtype,
                           progress=False)
        paths.append(p)
    return paths


@pytest.mark.parametrize("n,k", [(0, 1), (1, 1), (10, 3), (37, 4), (5, 8), (1000, 7)])
def test_shard_bounds_cover_exactly_in_order_with_balanced_sizes(n, k):
    bounds = [shard_bounds(n, k, i) for i in range(k)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(b[1] == c[0] for b, c in zip(bounds, bounds[1:]))
    sizes = [b - a for a, b in bounds]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1 and min(sizes) >= 0
    covered = np.concatenate([np.arange(a, b) for a, b in bounds])
    assert np.array_equal(covered, np.arange(n))


@pytest.mark.parametrize("n,k,align", [(37, 3, 8), (64, 4, 16), (10, 4, 4), (100, 3, 1)])
def test_aligned_shard_bounds_cut_on_batch_boundaries(n, k, align):
    bounds = [shard_bounds(n, k, i, align=align) for i in range(k)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(b[1] == c[0] for b, c in zip(bounds, bounds[1:]))
    assert all(a % align == 0 or a == n for a, _ in bounds)
    blocks = [-(-(b - a) // align) for a, b in bounds]
    assert max(blocks) - min(blocks) <= 1
    # a shard's batches are exactly the unsharded run's batches that fall inside it
    whole = batch_bounds(0, n, align)
    assert sum((batch_bounds(a, b, align) for a, b in bounds), []) == whole


def test_batch_bounds_follow_the_global_grid():
    assert batch_bounds(0, 10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(5, 13, 4) == [(5, 8), (8, 12), (12, 13)]
    assert batch_bounds(3, 3, 4) == []


def test_shard_bounds_reject_bad_arguments():
    for args in [(10, 0, 0), (10, 3, 3), (10, 3, -1), (-1, 2, 0), (10, 2, 0, 0)]:
        with pytest.raises(ValueError):
            shard_bounds(*args)


def test_extraction_writes_rows_labels_index_and_provenance(tmp_path):
    ds, model = FakeDataset(n=23), FakeClip()
    out = tmp_path / "e.h5"
    extract_embeddings(model, ds, out, start=4, stop=21, batch_size=6, progress=False)
    # read in blocks of at most one batch
    assert ds.calls == [(4, 6), (6, 12), (12, 18), (18, 21)]  # on the grid of multiples of 6
    with h5py.File(out, "r") as h5:
        emb = h5["embeddings"]
        assert emb.shape == (17, DIM) and emb.dtype == np.float16
        assert emb.chunks is not None and emb.chunks[1] == DIM  # chunked along rows
        assert np.array_equal(h5["index"][()], np.arange(4, 21))
        assert np.array_equal(h5["labels"][()], ds.labels[4:21])
        assert h5.attrs[COMPLETE_ATTR]
    emb, labels, prov = open_cache(out, {"model": "fake:linear", "dataset": "fake"})
    assert np.array_equal(emb, expected_rows(model, ds, "float16")[4:21])
    assert prov["start"] == 4 and prov["stop"] == 21 and prov["rows"] == 17
    assert prov["kind"] == "embeddings" and prov["dtype"] == "float16" and prov["n"] == 23
    assert prov["normalize"] is False and "torch" in prov["library_versions"]
    assert prov["embed_dim"] == DIM and prov["split"] == "test"


def test_normalize_gives_unit_rows(tmp_path):
    ds, model = FakeDataset(n=9), FakeClip()
    extract_embeddings(model, ds, tmp_path / "e.h5", dtype="float32", normalize=True,
                       progress=False)
    emb, _, prov = open_cache(tmp_path / "e.h5", {"normalize": True})
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_sharded_gathered_cache_equals_unsharded(tmp_path, dtype):
    ds, model = FakeDataset(n=37), FakeClip()
    whole = tmp_path / "whole.h5"
    extract_embeddings(model, ds, whole, batch_size=8, dtype=dtype, progress=False)
    shards = sharded(tmp_path, model, ds, 3, dtype=dtype, batch_size=5)
    gathered = tmp_path / "cache" / "embeddings.h5"
    prov = gather_shards(shards[::-1], gathered)  # order given does not matter
    e1, l1, p1 = open_cache(whole, {"dtype": dtype})
    e2, l2, p2 = open_cache(gathered, {"dtype": dtype, "model": "fake:linear"})
    assert e2.dtype == np.dtype(dtype) and e2.shape == (37, DIM)
    assert np.array_equal(e1, e2) and np.array_equal(l1, l2)
    assert np.array_equal(e1, expected_rows(model, ds, dtype))
    assert (p2["start"], p2["stop"], p2["rows"]) == (0, 37, 37) == (prov["start"], prov["stop"],
                                                                      prov["rows"])
    with h5py.File(gathered, "r") as h5:
        assert all(h5[k].is_virtual for k in ("embeddings", "labels", "index"))
        names = {s.file_name for s in h5["embeddings"].virtual_sources()}
    assert names == {f"shards/embeddings.{i}-of-3.h5" for i in range(3)}  # relative paths


def test_more_shards_than_rows_gives_empty_shards_that_gather(tmp_path):
    ds, model = FakeDataset(n=3), FakeClip()
    shards = sharded(tmp_path, model, ds, 5, dtype="float32")
    gather_shards(shards, tmp_path / "cache" / "embeddings.h5")
    emb, labels, _ = open_cache(tmp_path / "cache" / "embeddings.h5")
    assert np.array_equal(emb, expected_rows(model, ds, "float32"))
    assert np.array_equal(labels, ds.labels)


def test_gathered_cache_reads_after_moving_the_folder(tmp_path, monkeypatch):
    ds, model = FakeDataset(n=20), FakeClip()
    shards = sharded(tmp_path, model, ds, 2, dtype="float32")
    gather_shards(shards, tmp_path / "cache" / "embeddings.h5")
    before, _, _ = open_cache(tmp_path / "cache" / "embeddings.h5")
    shutil.move(tmp_path / "cache", tmp_path / "moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    after, labels, _ = open_cache(os.path.join("..", "moved", "embeddings.h5"))
    assert np.array_equal(before, after) and np.array_equal(labels, ds.labels)
    # a shard left behind: the VDS would silently read fill values, open_cache refuses instead
    (tmp_path / "moved" / "shards" / "embeddings.1-of-2.h5").unlink()
    with pytest.raises(IncompleteFileError, match="does not exist"):
        open_cache(tmp_path / "moved" / "embeddings.h5")


def test_gather_refuses_a_shard_from_another_model(tmp_path):
    ds = FakeDataset(n=20)
    s0 = sharded(tmp_path, FakeClip(), ds, 2)[0]
    s1 = sharded(tmp_path, FakeClip("fake:other", seed=1), ds, 2, folder="other")[1]
    with pytest.raises(ShardError, match="model"):
        gather_shards([s0, s1], tmp_path / "cache" / "embeddings.h5")
    assert not (tmp_path / "cache" / "embeddings.h5").exists()


def test_gather_refuses_mixed_dtypes(tmp_path):
    ds = FakeDataset(n=20)
    s0 = sharded(tmp_path, FakeClip(), ds, 2, dtype="float16")[0]
    s1 = sharded(tmp_path, FakeClip(), ds, 2, dtype="float32", folder="b")[1]
    with pytest.raises(ShardError, match="dtype"):
        gather_shards([s0, s1], tmp_path / "out.h5")


def test_gather_refuses_gaps_overlaps_and_missing_rows(tmp_path):
    ds, model = FakeDataset(n=30), FakeClip()
    three = sharded(tmp_path, model, ds, 3, folder="three")  # [0,10) [10,20) [20,30)
    two = sharded(tmp_path, model, ds, 2, folder="two")  # [0,15) [15,30)
    with pytest.raises(ShardError, match="gap"):
        gather_shards([three[0], three[2]], tmp_path / "out.h5")
    with pytest.raises(ShardError, match="overlap"):
        gather_shards([three[0], two[0], three[2]], tmp_path / "out.h5")
    with pytest.raises(ShardError, match="missing"):
        gather_shards(three[:2], tmp_path / "out.h5")
    gather_shards(three[:2], tmp_path / "three" / "part.h5", require_complete=False)
    emb, _, prov = open_cache(tmp_path / "three" / "part.h5")
    assert (prov["start"], prov["stop"]) == (0, 20) and len(emb) == 20
    assert not (tmp_path / "out.h5").exists()


def test_gather_refuses_an_incomplete_shard(tmp_path):
    ds, model = FakeDataset(n=20), FakeClip()
    shards = sharded(tmp_path, model, ds, 2)
    with h5py.File(shards[1], "a") as h5:
        del h5.attrs[COMPLETE_ATTR]
    with pytest.raises(IncompleteFileError):
        gather_shards(shards, tmp_path / "cache" / "embeddings.h5")


def test_open_cache_refuses_incomplete_files_and_other_models(tmp_path):
    ds, model = FakeDataset(n=10), FakeClip()
    out = tmp_path / "e.h5"
    extract_embeddings(model, ds, out, progress=False)
    with pytest.raises(ProvenanceError, match="model"):
        open_cache(out, {"model": "open_clip:ViT-B-16", "dataset": "fake"})
    with pytest.raises(ProvenanceError, match="dtype"):
        open_cache(out, {"dtype": "float32"})
    with h5py.File(out, "a") as h5:
        del h5.attrs[COMPLETE_ATTR]
    with pytest.raises(IncompleteFileError):
        open_cache(out, {"model": "fake:linear"})


def test_a_failed_extraction_leaves_nothing_behind(tmp_path):
    class Dying(FakeClip):
        def encode_image(self, pixels, normalize=False):
            if getattr(self, "seen", 0) >= 1:
                raise RuntimeError("killed")
            self.seen = 1
            return super().encode_image(pixels, normalize)

    with pytest.raises(RuntimeError, match="killed"):
        extract_embeddings(Dying(), FakeDataset(n=20), tmp_path / "e.h5", batch_size=4,
                           progress=False)
    assert list(tmp_path.iterdir()) == []


def test_extraction_rejects_bad_ranges_and_dtypes(tmp_path):
    ds, model = FakeDataset(n=10), FakeClip()
    with pytest.raises(ValueError, match="row range"):
        extract_embeddings(model, ds, tmp_path / "e.h5", start=5, stop=11, progress=False)
    with pytest.raises(ValueError, match="dtype"):
        extract_embeddings(model, ds, tmp_path / "e.h5", dtype="int8", progress=False)


def test_tiny_open_clip_through_the_registry_sharded_equals_unsharded(tmp_path):
    """A random-weight tiny open_clip ViT saved as a toy model and loaded by load_model."""
    import open_clip

    from cliplens.core.models import registry, storage
    torch.manual_seed(0)
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8,
                       "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1},
    }
    net = open_clip.CLIP(**cfg)
    pre = {"size": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bicubic",
           "resize_mode": "shortest"}
    root = tmp_path / "toy"
    storage.save_open_clip_dir(net, cfg, pre, root / "tiny")
    storage.write_model_meta(root / "tiny", {"library": "open_clip", "family": "clip",
                                             "name": "tiny"})
    model = registry.load_model("toy:tiny", toy_root=str(root), device="cpu", hf_home=None)
    ds = FakeDataset(n=13)
    whole = tmp_path / "whole.h5"
    extract_embeddings(model, ds, whole, batch_size=4, dtype="float32", progress=False)
    # shards cut on batch boundaries run the very same batches: bitwise equal
    shards = sharded(tmp_path, model, ds, 2, dtype="float32", batch_size=4, align=4)
    gather_shards(shards, tmp_path / "cache" / "embeddings.h5")
    e1, _, p1 = open_cache(whole, {"model": "toy:tiny", "image_size": 16})
    e2, _, _ = open_cache(tmp_path / "cache" / "embeddings.h5", {"model": "toy:tiny"})
    assert e1.shape == (13, 32) and np.isfinite(e1).all() and e1.std() > 0
    assert np.array_equal(e1, e2)
    # a different batch size may move BLAS rounding in the last bits only
    with torch.inference_mode():
        direct = model.encode_image(model.preprocess(ds.images(0, 13))).numpy()
    np.testing.assert_allclose(e1, direct, rtol=1e-5, atol=1e-6)


# ---- damage: every dataset is checksummed; reads refuse what the writer never stored


def test_every_cache_dataset_carries_a_checksum_and_bounds(tmp_path):
    ds, model = FakeDataset(n=20), FakeClip()
    out = tmp_path / "e.h5"
    prov = extract_embeddings(model, ds, out, batch_size=6, dtype="float32", progress=False)
    with h5py.File(out) as h5:
        assert all(h5[k].fletcher32 for k in ("embeddings", "labels", "index"))
        emb = h5["embeddings"][()]
    assert prov["bounds"]["embeddings"] == [float(emb.min()), float(emb.max())]


def test_a_flipped_byte_in_a_shard_names_that_shard(tmp_path):
    from tests.corrupt import flip_byte

    from cliplens.core.io import CorruptFileError

    ds, model = FakeDataset(n=20), FakeClip()
    shards = sharded(tmp_path, model, ds, 2, dtype="float32")
    gathered = tmp_path / "cache" / "embeddings.h5"
    gather_shards(shards, gathered)
    flip_byte(shards[1], dataset="embeddings")
    with pytest.raises(CorruptFileError) as err:
        open_cache(gathered)
    msg = str(err.value)
    assert f"{shards[1]} is damaged" in msg and "embeddings" in msg
    assert f"rm -r {shards[1]} {gathered}" in msg  # the gathered file maps rows to it
    with pytest.raises(CorruptFileError, match="embeddings"):
        open_cache(shards[1])
    open_cache(shards[0])  # the other shard is untouched


def test_a_truncated_shard_is_named_with_the_way_out(tmp_path):
    from tests.corrupt import truncate

    from cliplens.core.io import CorruptFileError

    ds, model = FakeDataset(n=20), FakeClip()
    shards = sharded(tmp_path, model, ds, 2, dtype="float32")
    gathered = tmp_path / "cache" / "embeddings.h5"
    gather_shards(shards, gathered)
    truncate(shards[0])
    with pytest.raises(CorruptFileError, match="HDF5 cannot open it") as err:
        open_cache(gathered)
    assert f"rm -r {shards[0]} {gathered}" in str(err.value)


@pytest.mark.parametrize("value,what", [(np.nan, "NaN or infinite"), (1e38, "outside"),
                                        (np.inf, "NaN or infinite")])
def test_values_the_writer_never_stored_are_refused(tmp_path, value, what):
    from tests.corrupt import rewrite

    from cliplens.core.io import CorruptFileError

    ds, model = FakeDataset(n=20), FakeClip()
    shards = sharded(tmp_path, model, ds, 2, dtype="float32")
    gathered = tmp_path / "cache" / "embeddings.h5"
    gather_shards(shards, gathered)
    rewrite(shards[1], "embeddings", 3, value)  # h5py recomputes the checksum
    with pytest.raises(CorruptFileError, match=what) as err:
        open_cache(gathered)
    assert f"{shards[1]} is damaged" in str(err.value)  # the shard, not the gathered file


def test_a_model_computing_nan_writes_no_cache(tmp_path):
    class Broken(FakeClip):
        def encode_image(self, pixels, normalize=False):
            out = super().encode_image(pixels, normalize)
            out[0, 0] = float("nan")
            return out

    with pytest.raises(ValueError, match="non-finite"):
        extract_embeddings(Broken(), FakeDataset(n=10), tmp_path / "e.h5", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_chunk_rows_of_a_shard_and_of_a_gathered_cache(tmp_path):
    """A gathered cache (virtual datasets, no chunks of its own) reports its shards' chunk
    rows, so passes over it can read whole chunks."""
    import h5py

    from cliplens.core.caches.rows import RowCache

    ds, model = FakeDataset(n=20), FakeClip()
    shards = sharded(tmp_path, model, ds, 2, dtype="float32")
    gathered = tmp_path / "cache" / "embeddings.h5"
    gather_shards(shards, gathered)
    with h5py.File(shards[0], "r") as h5:
        want = h5["embeddings"].chunks[0]
    with RowCache(gathered) as cache:
        assert cache.array("embeddings").chunks is None and cache.chunk_rows("embeddings") == want
    with RowCache(shards[1]) as cache:
        assert cache.chunk_rows("embeddings") == want
