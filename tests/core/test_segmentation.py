"""Segmentation scores: definitions on constructed maps, and masks aligned like the images."""

import numpy as np
import pytest
from PIL import Image

from cliplens.core import segmentation as seg


def test_a_perfect_map_scores_one_and_an_inverted_map_zero():
    t = np.zeros((2, 8, 8), bool)
    t[0, 2:5, 2:6] = True
    t[1, 0:3, :] = True
    good = seg.segmentation_scores(t.astype(float), t)
    assert good["pixel_accuracy"] == 1.0 and good["miou"] == 1.0 and good["map"] == 1.0
    bad = seg.segmentation_scores(1.0 - t, t)
    assert bad["pixel_accuracy"] == 0.0 and bad["miou"] == 0.0
    assert bad["map"] == pytest.approx(np.mean([t[i].mean() for i in range(2)]))


def test_scores_match_their_definitions():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 6, 6))
    masks = rng.random((3, 6, 6)) > 0.6
    got = seg.segmentation_scores(maps, masks)
    pred = maps > maps.mean(axis=(1, 2), keepdims=True)
    assert got["pixel_accuracy"] == pytest.approx((pred == masks).mean())
    iou_fg = (pred & masks).sum() / (pred | masks).sum()
    iou_bg = (~pred & ~masks).sum() / (~pred | ~masks).sum()
    assert got["miou"] == pytest.approx((iou_fg + iou_bg) / 2)
    assert got["iou_fg"] == pytest.approx(iou_fg)
    with pytest.raises(ValueError, match="align_mask"):
        seg.segmentation_scores(maps[:, :5], masks)


def test_mask_gets_the_image_geometry():
    # a 40 x 20 (W x H) image with a marker column: CLIP's resize + centre crop to 10 keeps
    # the middle 20 x 20, so the marker at x = 20..23 lands at x = 5 after scaling by 0.5
    mask = np.zeros((20, 40), bool)
    mask[:, 20:22] = True
    out = seg.align_mask(mask, 10)
    assert out.shape == (10, 10) and out.dtype == bool
    assert out[:, 5].all() and out.sum() == 10
    from torchvision import transforms as T
    img = Image.fromarray((mask * 255).astype(np.uint8))
    ref = np.asarray(T.CenterCrop(10)(T.Resize(10, interpolation=T.InterpolationMode.NEAREST)(img))) > 127
    np.testing.assert_array_equal(out, ref)


def test_upsample_keeps_a_constant_map_and_orders_blocks():
    up = seg.upsample(np.full((2, 2), 3.0), 8)
    assert up.shape == (8, 8) and np.allclose(up, 3.0)
    grid = np.array([[0.0, 1.0], [0.0, 1.0]])
    up = seg.upsample(grid[None], 8)[0]
    assert up[:, :3].max() < 0.5 < up[:, 5:].min()


def test_class_scores_count_one_confusion_matrix_and_skip_ignored_pixels():
    true = [np.array([[0, 0, 1], [2, 255, 1]]), np.array([[2, 2, 255]])]
    pred = [np.array([[0, 1, 1], [2, 0, 0]]), np.array([[2, 0, 7]])]   # 7: an ignored pixel
    got = seg.class_scores(pred, true, n_classes=3)
    # counted pixels: 5 + 2; correct: (0,0), (1,1), (2,2), (2,2) = 4
    assert got["pixel_accuracy"] == pytest.approx(4 / 7)
    # (true, pred) counted: (0,0) (0,1) (1,1) (2,2) (1,0) (2,2) (2,0); IoU = inter / union:
    # class 0: 1 / (2 + 3 - 1), class 1: 1 / (2 + 2 - 1), class 2: 2 / (3 + 2 - 2)
    iou = [1 / 4, 1 / 3, 2 / 3]
    assert got["miou"] == pytest.approx(np.mean(iou)) and got["classes"] == 3 and got["n"] == 2
    with pytest.raises(ValueError, match="labels must lie"):
        seg.class_scores([np.array([[3]])], [np.array([[0]])], n_classes=3)


def test_label_maps_get_the_image_geometry_without_new_labels():
    labels = np.zeros((20, 40), np.int64)
    labels[:, 20:22] = 7
    labels[0, :] = 255
    out = seg.align_labels(labels, 10)
    assert out.shape == (10, 10) and set(np.unique(out)) <= {0, 7, 255}
    assert (out[1:, 5] == 7).all()
