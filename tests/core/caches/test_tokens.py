"""Token-grid caches: the hooked tokens are exactly the model's own hidden states, sharded
extraction gathers to the unsharded cache, readers check provenance, views transform images."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cliplens.core.caches.rows import gather_shards, shard_bounds  # noqa: E402
from cliplens.core.caches.tokens import extract_tokens, open_tokens, read_tokens  # noqa: E402
from cliplens.core.data.views import FirstRows, TransformedView  # noqa: E402
from cliplens.core.io import IncompleteFileError, ProvenanceError  # noqa: E402
from cliplens.core.models.blocks import resolve_layer  # noqa: E402
from cliplens.core.toy import world  # noqa: E402
from tests.tiny_models import ArrayDataset, tiny_open_clip_vit, tiny_siglip  # noqa: E402








@pytest.fixture(scope="module")
def siglip():
    return tiny_siglip()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (37, 40, 40, 3), dtype=np.uint8)


def test_tokens_equal_the_models_own_hidden_states(siglip):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        hs = siglip.model.vision_model(pixel_values=x, output_hidden_states=True).hidden_states
        assert len(hs) == 4
        hooks = [(len(b._forward_hooks), len(b._forward_pre_hooks)) for b in siglip.vision_blocks]
        for layer in (-2, -1, 0, 1, 2, 3, -4):
            assert torch.equal(siglip.tower.hidden_tokens(x, layer), hs[layer]), layer
    assert siglip.tower.grid() == (4, 4)
    # no hook is left behind
    assert hooks == [(len(b._forward_hooks), len(b._forward_pre_hooks))
                     for b in siglip.vision_blocks]


def test_open_clip_tokens_drop_the_class_token():
    model = tiny_open_clip_vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.model.visual.forward_intermediates(
            x, indices=[1], output_fmt="NLC", intermediates_only=True)["image_intermediates"][0]
        tok = model.tower.hidden_tokens(x, -2)  # after block 2 of 3 = intermediate index 1
    assert tok.shape == (2, 16, 32) and torch.equal(tok, ref)


def test_resolve_layer():
    assert resolve_layer(-2, 12) == 11 and resolve_layer(0, 12) == 0 and resolve_layer(12, 12) == 12
    with pytest.raises(ValueError, match="outside"):
        resolve_layer(-14, 12)


def test_sharded_extraction_gathers_to_the_unsharded_cache(tmp_path, siglip, images):
    ds = ArrayDataset(images)
    full = tmp_path / "full.h5"
    prov = extract_tokens(siglip, ds, full, layer=-2, batch_size=8, dtype="float32",
                          progress=False)
    assert prov["kind"] == "tokens" and prov["grid"] == [4, 4] and prov["block"] == 2
    shards = []
    for i in range(3):
        a, b = shard_bounds(len(ds), 3, i, align=8)
        shards.append(tmp_path / "shards" / f"s{i}.h5")
        extract_tokens(siglip, ds, shards[-1], layer=-2, start=a, stop=b, batch_size=8,
                       dtype="float32", progress=False)
    gathered = tmp_path / "gathered.h5"
    gather_shards(shards, gathered)
    ref, _ = read_tokens(full)
    got, gprov = read_tokens(gathered, {"model": "hf:./tiny-siglip", "layer": -2})
    assert got.shape == (37, 16, 32) and np.array_equal(got, ref)
    # equal to the model's own hidden_states[-2] of the preprocessed images
    with torch.no_grad():
        px = siglip.preprocess(ds.images(0, 5))
        hs = siglip.model.vision_model(pixel_values=px, output_hidden_states=True).hidden_states
    assert np.allclose(ref[:5], hs[-2].numpy(), atol=1e-5)
    with open_tokens(gathered) as tc:
        rows = [5, 0, 36, 5]
        assert np.array_equal(tc.read(rows), ref[rows])
        tc.load()
        assert np.array_equal(tc.read(rows), ref[rows])
    with pytest.raises(ProvenanceError, match="layer"):
        open_tokens(gathered, {"layer": -1})
    os.remove(shards[1])
    with pytest.raises(IncompleteFileError, match="does not exist"):
        open_tokens(gathered)


def test_float16_cache_is_the_rounded_float32_cache(tmp_path, siglip, images):
    ds = ArrayDataset(images[:6])
    extract_tokens(siglip, ds, tmp_path / "a.h5", dtype="float32", progress=False)
    extract_tokens(siglip, ds, tmp_path / "b.h5", dtype="float16", progress=False)
    a, _ = read_tokens(tmp_path / "a.h5")
    b, prov = read_tokens(tmp_path / "b.h5")
    assert b.dtype == np.float16 and prov["dtype"] == "float16"
    assert np.array_equal(a.astype(np.float16), b)


def test_views_apply_the_toy_worlds_colour_transforms(images):
    ds = ArrayDataset(images)
    for key, fn in (("images_rb_swap", world.rb_swap), ("images_gray", world.grayscale),
                    ("images_b_suppressed", lambda a: world.suppress_blue(a, 0.25))):
        view = TransformedView(ds, key, blue_factor=0.25)
        assert np.array_equal(np.asarray(view.image(3)), fn(images[3]))
        assert view.describe()["image_key"] == key
    first = FirstRows(ds, 10)
    assert len(first) == 10 and first.describe()["n"] == 10 and first.describe()["of_n"] == 37
    assert len(first.images(5, 20)) == 5
    with pytest.raises(ValueError, match="unknown image view"):
        TransformedView(ds, "images_sepia")
