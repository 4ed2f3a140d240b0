"""Small stand-ins for manually placed datasets, laid out as their readers expect."""

import numpy as np
from PIL import Image


def pascal_context(root, ids, rng):
    """A PASCAL Context-59 folder in the layout the reader expects, under
    ``root/datasets/pascal-context``: a 30 x 20 JPEG and a random label map (0..59) per id.
    Returns (the VOC2010 folder, the raw label maps)."""
    voc = root / "datasets" / "pascal-context" / "VOC2010"
    (voc / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    (voc / "SegmentationClassContext").mkdir()
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("\n".join(ids) + "\n")
    raws = []
    for k, i in enumerate(ids):
        Image.new("RGB", (30, 20), (40 * k, 0, 0)).save(voc / "JPEGImages" / f"{i}.jpg")
        raw = rng.integers(0, 60, size=(20, 30)).astype(np.uint8)
        Image.fromarray(raw).save(voc / "SegmentationClassContext" / f"{i}.png")
        raws.append(raw)
    return voc, raws
