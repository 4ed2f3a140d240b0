import re

import h5py
import numpy as np
import pytest

from cliplens.core.data.toy import ToyDataset, read_split, write_toy_dataset
from cliplens.core.io import COMPLETE_ATTR, IncompleteFileError
from cliplens.core.toy import world


def test_generation_is_deterministic_in_the_seed(toy_cfg):
    a = world.generate("toy", toy_cfg, splits=["val"])["val"]
    b = world.generate("toy", toy_cfg, splits=["val"])["val"]
    assert np.array_equal(a.images, b.images) and a.captions_rich == b.captions_rich
    other = toy_cfg.replace(seed=toy_cfg.seed + 1)
    c = world.generate("toy", other, splits=["val"])["val"]
    assert not np.array_equal(a.images, c.images)
    # splits are independent streams
    t = world.generate("toy", toy_cfg, splits=["test"])["test"]
    assert not np.array_equal(a.images[:10], t.images[:10])


@pytest.mark.parametrize(
    "shape, area",
    [("circle", np.pi), ("square", 1.6**2), ("ring", np.pi * (1 - 0.55**2)), ("cross", 2 * 0.6 * 1.9 - 0.6**2)],
)
def test_shape_masks_have_the_area_of_their_inequality(shape, area):
    r = 40.0
    m = world.shape_mask(shape, 128, 64.0, 64.0, r)
    assert m.sum() / r**2 == pytest.approx(area, rel=0.03)


def test_polygon_shapes_are_inside_their_disc_and_distinct():
    r = 40.0
    masks = {s: world.shape_mask(s, 128, 64.0, 64.0, r) for s in world.SHAPES}
    disc = world.shape_mask("circle", 128, 64.0, 64.0, r * 1.01)
    for s in ("triangle", "star"):
        assert masks[s].sum() > 0.2 * r**2 and not (masks[s] & ~disc).any()
    names = list(masks)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            iou = (masks[names[i]] & masks[names[j]]).sum() / (masks[names[i]] | masks[names[j]]).sum()
            assert iou < 0.85, (names[i], names[j])


def test_pixels_masks_and_labels_agree(toy_cfg):
    sp = world.generate("toy", toy_cfg, splits=["train"])["train"]
    s = sp.images.shape[1]
    for i in range(len(sp)):
        img, mask = sp.images[i].astype(float), sp.masks[i]
        colour = world.COLOURS[sp.labels["colour"][i]]
        mean_obj = img[mask].mean(0)
        assert np.abs(mean_obj - world.COLOUR_RGB[colour]).max() < 25, (i, colour, mean_obj)
        bg = img[~mask].mean()
        if world.BACKGROUNDS[sp.labels["background"][i]] == "dark":
            assert bg < 80
        else:
            assert bg > 130
        ys, xs = np.nonzero(mask)
        cx, cy = xs.mean() / s, ys.mean() / s
        pos = world.POSITIONS[sp.labels["position"][i]]
        fx, fy = world.POSITION_XY[pos]
        assert abs(cx - fx) < 0.1 and abs(cy - fy) < 0.1, (pos, cx, cy)
    small = sp.masks[sp.labels["size"] == 0].sum((1, 2)).mean()
    large = sp.masks[sp.labels["size"] == 1].sum((1, 2)).mean()
    assert large > 2 * small


def test_captions_name_the_factors(toy_cfg):
    sp = world.generate("toy", toy_cfg, splits=["val"])["val"]
    for i, (rich, poor) in enumerate(zip(sp.captions_rich, sp.captions_poor)):
        for f, values in world.FACTORS.items():
            syn = world.PHRASES[f][values[sp.labels[f][i]]]
            assert any(w in rich for w in syn), (f, rich)
        shape = world.SHAPES[sp.labels["shape"][i]]
        assert shape in poor
        assert not any(w in poor for p in world.PHRASES["position"].values() for w in p)
        assert " a a" not in rich and not any(f" a {v}" in rich for v in "aeiou")


def test_object_labels_match_classnames():
    names = world.classnames("object")
    for c in range(len(world.COLOURS)):
        for s in range(len(world.SHAPES)):
            assert names[world.object_label(c, s)] == f"{world.COLOURS[c]} {world.SHAPES[s]}"


def test_spurious_agreement_is_exact(toy_cfg):
    sp = world.generate("toy-spurious", toy_cfg)
    for split, want in (("train", 0.95), ("test", 0.5)):
        lab = sp[split].labels
        assert np.mean(lab["background"] == lab["spurious_class"]) == pytest.approx(want, abs=0.006)
        classes = [world.SHAPES.index(c) for c in toy_cfg.spurious.classes]
        assert np.array_equal(lab["shape"], np.asarray(classes)[lab["spurious_class"]])


def test_shift_colour_frequency_drifts(toy_cfg):
    lab = world.generate("toy-shift", toy_cfg)["test"].labels
    k = world.COLOURS.index(toy_cfg.shift.colour)
    freq = [np.mean(lab["colour"][lab["year"] == t] == k) for t in range(len(toy_cfg.shift.years))]
    assert freq[-1] - freq[0] > 0.25
    assert np.polyfit(np.arange(len(freq)), freq, 1)[0] > 0


def test_colour_operators():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(3, 5, 5, 3), dtype=np.uint8)
    sw = world.rb_swap(img)
    assert np.array_equal(sw[..., 0], img[..., 2]) and np.array_equal(sw[..., 1], img[..., 1])
    assert np.array_equal(world.rb_swap(sw), img)
    assert (world.suppress_blue(img)[..., 2] == 0).all()
    assert np.array_equal(world.suppress_blue(img)[..., :2], img[..., :2])
    g = world.grayscale(img)
    assert np.array_equal(g[..., 0], g[..., 2])
    want = np.rint(0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2])
    assert np.abs(g[..., 0].astype(int) - want).max() <= 1


def test_hdf5_round_trip_and_incomplete_file(tmp_path, toy_cfg):
    splits = world.generate("toy-colour-ops", toy_cfg)
    path = tmp_path / "ops.h5"
    write_toy_dataset(path, splits, {"dataset": "toy-colour-ops"})
    back = read_split(path, "test", keys=("images", "images_rb_swap", "masks"))
    assert np.array_equal(back["images"], splits["test"].images)
    assert np.array_equal(back["images_rb_swap"], world.rb_swap(splits["test"].images))
    assert back["captions_rich"] == splits["test"].captions_rich
    ds = ToyDataset(path, "test", name="toy-colour-ops", label_key="colour", image_key="images_gray")
    assert len(ds) == 10 and ds.classnames[0] == "red"
    assert np.array_equal(np.asarray(ds.image(3)), world.grayscale(splits["test"].images[3:4])[0])
    with h5py.File(path, "a") as h5:
        del h5.attrs[COMPLETE_ATTR]
    with pytest.raises(IncompleteFileError, match="incomplete"):
        ToyDataset(path, "test")


@pytest.mark.parametrize("dataset", ["test/images", "test/captions_rich", "test/labels/shape"])
def test_a_flipped_byte_in_the_toy_world_fails_its_read(tmp_path, toy_cfg, dataset):
    from tests.corrupt import flip_byte

    from cliplens.core.io import CorruptFileError

    splits = world.generate("toy", toy_cfg)
    path = tmp_path / "toy.h5"
    write_toy_dataset(path, splits, {"dataset": "toy"})
    flip_byte(path, dataset=dataset)
    with pytest.raises(CorruptFileError, match=f"{path} is damaged") as err:
        read_split(path, "test")
    assert f"rm -r {path}" in str(err.value)
    read_split(path, "train")  # the other splits' chunks still check out


def _without(text, phrases):
    for p in sorted(phrases, key=len, reverse=True):
        text = re.sub(rf"\b{re.escape(p)}\b", " ", text)
    return text


def test_partial_captions_name_exactly_the_chosen_factors(toy_cfg):
    sp = world.generate("toy", toy_cfg, splits=["val"])["val"]
    texts, named = world.partial_captions(sp.labels, np.random.default_rng(0), max_factors=4)
    names = list(world.FACTORS)
    assert len(texts) == len(sp) and named.shape == (len(sp), len(names))
    assert set(named.sum(1)) == {1, 2, 3, 4}
    for i, text in enumerate(texts):
        said = [f for f, on in zip(names, named[i]) if on]
        for f in said:  # a synonym of the true value of every named factor
            syn = world.PHRASES[f][world.FACTORS[f][sp.labels[f][i]]]
            assert any(re.search(rf"\b{re.escape(w)}\b", text) for w in syn), (f, text)
        rest = _without(text, [w for f in said for v in world.PHRASES[f].values() for w in v])
        for f in set(names) - set(said):  # no phrase of any value of the others
            assert not any(re.search(rf"\b{re.escape(w)}\b", rest)
                           for v in world.PHRASES[f].values() for w in v), (f, text)
        generic = any(re.search(rf"\b{w}\b", text) for w in world.GENERIC_NOUNS)
        assert generic == ("shape" not in said), text
        assert not any(re.search(rf"\b{w}\b", text) for w in ("object", "thing", "something"))
    single, one = world.partial_captions(sp.labels, np.random.default_rng(0), max_factors=1)
    assert (one.sum(1) == 1).all() and set(one.argmax(1)) == set(range(len(names)))
    with pytest.raises(ValueError, match="max_factors"):
        world.partial_captions(sp.labels, np.random.default_rng(0), max_factors=6)
    assert len(single) == len(sp)
    with pytest.raises(ValueError, match="unknown factors"):
        world.partial_caption({f: 0 for f in names}, {"hue"}, np.random.default_rng(0))
