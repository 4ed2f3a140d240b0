"""Segmentation scores: heat maps against binary object masks (studies 001 and 003), and label
maps against class masks (:func:`class_scores`, study 003 on PASCAL Context-59).

The ImageNet-segmentation protocol as the published evaluation uses it, with images and masks
put through the *same* geometry:

* ``align_mask``: the mask gets the image's preprocessing geometry — resize the shorter side to
  ``size`` and centre-crop ``size`` x ``size`` (CLIP's ``Resize`` + ``CenterCrop``), nearest
  neighbour so it stays binary.  (The original resized masks differently from images.)
* ``upsample``: a patch-grid heat map [gh, gw] -> [size, size], bilinear.
* ``segmentation_scores``: each map is thresholded at its own mean (foreground where
  ``map > mean(map)``); then over the whole set, summing pixels over images,

      pixel accuracy = correct pixels / all pixels
      IoU_c = |pred_c AND true_c| / |pred_c OR true_c|   for c in {background, foreground}
      mIoU = (IoU_bg + IoU_fg) / 2

  and mAP = mean over images of the average precision of the raw map scores against the
  mask (sklearn's ``average_precision_score``; images whose mask is all one class are skipped).

* ``centre_prior``: the baseline every map is compared with, a Gaussian at the image centre.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image


def _resize_crop(im: Image.Image, size: int, resample) -> Image.Image:
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def align_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary mask [H, W] -> [size, size] with the image preprocessing's geometry (shorter side
    resized to ``size``, centre crop), nearest neighbour."""
    m = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
    return np.asarray(_resize_crop(m, size, Image.NEAREST)) > 127


def align_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """A label map [H, W] of class indices 0..255 (255: ignored) -> int64 [size, size] with the
    same geometry as :func:`align_mask` (nearest neighbour, so no new labels appear)."""
    m = Image.fromarray(np.asarray(labels).astype(np.uint8))
    return np.asarray(_resize_crop(m, size, Image.NEAREST)).astype(np.int64)


def class_scores(preds: Sequence[np.ndarray] | np.ndarray, trues: Sequence[np.ndarray] | np.ndarray,
                 n_classes: int, ignore: int = 255) -> dict[str, float]:
    """Multi-class segmentation scores of predicted label maps against true ones (pixels whose
    true label is ``ignore`` are left out), from one confusion matrix summed over the images:
    ``pixel_accuracy`` = correct / counted pixels; ``miou`` = mean over the classes present in
    either (union > 0) of ``|pred_c AND true_c| / |pred_c OR true_c|``; ``classes`` = how many
    classes that mean is over; ``n`` images."""
    conf = np.zeros((n_classes, n_classes), dtype=np.int64)
    n = 0
    for p, t in zip(preds, trues):
        p, t = np.asarray(p).ravel(), np.asarray(t).ravel()
        if p.shape != t.shape:
            raise ValueError(f"a prediction of {p.size} pixels against a truth of {t.size}")
        keep = t != ignore
        if (t[keep] >= n_classes).any() or (p[keep] >= n_classes).any() or (p[keep] < 0).any():
            raise ValueError(f"labels must lie in 0..{n_classes - 1} (or {ignore}, ignored)")
        conf += np.bincount(t[keep] * n_classes + p[keep],
                            minlength=n_classes * n_classes).reshape(n_classes, n_classes)
        n += 1
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - np.diag(conf)
    present = union > 0
    total = conf.sum()
    return {"pixel_accuracy": float(inter.sum() / total) if total else float("nan"),
            "miou": float((inter[present] / union[present]).mean()) if present.any() else float("nan"),
            "classes": int(present.sum()), "n": n}


def align_image(image: Image.Image, size: int) -> np.ndarray:
    """An RGB image with the same geometry as :func:`align_mask` (bicubic), uint8 [size, size, 3],
    for showing maps over the pixels the model saw."""
    return np.asarray(_resize_crop(image.convert("RGB"), size, Image.BICUBIC))


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """Heat maps [N, gh, gw] (or one [gh, gw]) -> [N, size, size], bilinear (align_corners off)."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    single = x.ndim == 2
    x = x[None] if single else x
    y = F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    y = y.numpy()
    return y[0] if single else y


def segmentation_scores(maps: Sequence[np.ndarray] | np.ndarray,
                        masks: Sequence[np.ndarray] | np.ndarray) -> dict[str, float]:
    """Pixel accuracy, mIoU (background/foreground) and mAP of heat maps [N, S, S] against
    binary masks [N, S, S] (see the module docstring); also ``iou_fg``, ``iou_bg`` and ``n``."""
    from sklearn.metrics import average_precision_score

    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    masks = [np.asarray(m, dtype=bool) for m in masks]
    if len(maps) != len(masks) or not maps:
        raise ValueError(f"need as many maps as masks (and at least one), got {len(maps)} and "
                         f"{len(masks)}")
    correct = total = 0
    inter = np.zeros(2)
    union = np.zeros(2)
    aps = []
    for m, t in zip(maps, masks):
        if m.shape != t.shape:
            raise ValueError(f"map {m.shape} and mask {t.shape} differ: align_mask/upsample first")
        pred = m > m.mean()
        correct += int((pred == t).sum())
        total += t.size
        for c, (p, g) in enumerate(((~pred, ~t), (pred, t))):
            inter[c] += (p & g).sum()
            union[c] += (p | g).sum()
        if t.any() and not t.all():
            aps.append(average_precision_score(t.ravel(), m.ravel()))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return {"pixel_accuracy": correct / total, "miou": float(iou.mean()),
            "iou_bg": float(iou[0]), "iou_fg": float(iou[1]),
            "map": float(np.mean(aps)) if aps else float("nan"), "n": len(maps)}


def centre_prior(size: int, sigma: float = 0.25) -> np.ndarray:
    """A baseline heat map [size, size]: a Gaussian at the image centre, ``sigma`` in image
    widths (what a segmenter that ignores the image would output)."""
    c = (np.arange(size) + 0.5) / size - 0.5
    return np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * sigma ** 2))
