"""Readers of the real datasets (torchvision's classes with ``download=False``, and small readers
for COCO and CC3M captions, Waterbirds, ImageNet-segmentation and PASCAL Context), each an
:class:`~cliplens.core.data.base.ImageDataset`, and :data:`LOADERS`: dataset name -> reader."""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from .base import ImageDataset


@functools.lru_cache(maxsize=None)
def open_clip_metadata():
    """open_clip's ``zero_shot_metadata`` module (ImageNet class names and prompt templates).

    Loaded from open_clip's installed source file without importing the ``open_clip`` package
    (which would import torch and take seconds); the same module if it is already imported.
    """
    mod = sys.modules.get("open_clip.zero_shot_metadata")
    if mod is not None:
        return mod
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise ImportError("open_clip_torch is not installed (pip install open_clip_torch)")
    path = Path(spec.origin).parent / "zero_shot_metadata.py"
    mspec = importlib.util.spec_from_file_location("_cliplens_open_clip_zero_shot_metadata", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------------
# Class names


def clean_classname(name: str) -> str:
    """A readable class name: ``apple_pie`` -> ``apple pie``, ``AnnualCrop`` -> ``annual crop``.

    Underscores become spaces; a single CamelCase word is split and lower-cased; names that
    already contain spaces (``American Bulldog``) keep their case.
    """
    s = name.replace("_", " ").strip()
    if " " not in s and re.search(r"[a-z][A-Z]", s):
        s = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", s).lower()
    return re.sub(r"\s+", " ", s)


#: per-dataset names where the cleaned folder name reads badly
CLASSNAME_OVERRIDES: dict[str, dict[str, str]] = {
    "eurosat": {"SeaLake": "sea or lake"},
}


def _classnames(dataset: str, raw: Sequence[str]) -> list[str]:
    over = CLASSNAME_OVERRIDES.get(dataset, {})
    return [over.get(c, clean_classname(c)) for c in raw]


# ---------------------------------------------------------------------------------------------
# Datasets


def _to_rgb(img: Any) -> Image.Image:
    if isinstance(img, Image.Image):
        return img if img.mode == "RGB" else img.convert("RGB")
    return Image.fromarray(np.asarray(img)).convert("RGB")


def _targets(tv: Any) -> np.ndarray:
    """Integer labels of a torchvision dataset without decoding its images."""
    for attr in ("targets", "_labels", "labels", "y"):
        val = getattr(tv, attr, None)
        if val is not None and not callable(val):
            return np.asarray(val, dtype=np.int64)
    if hasattr(tv, "_samples"):  # StanfordCars
        return np.asarray([t for _, t in tv._samples], dtype=np.int64)
    raise TypeError(f"cannot read labels of {type(tv).__name__} without loading every image")


class TorchvisionDataset(ImageDataset):
    """A torchvision classification dataset (no transform) as an :class:`ImageDataset`.

    ``indices`` selects and orders a subset (for datasets without official splits).
    """

    def __init__(self, name: str, split: str, tv: Any, classnames: Sequence[str],
                 indices: np.ndarray | None = None, root: str | None = None):
        self.name, self.split, self.tv, self.root = name, split, tv, root
        labels = _targets(tv)
        self.indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
        self.labels = labels[self.indices]
        self.classnames = list(classnames)

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int) -> Image.Image:
        img, _ = self.tv[int(self.indices[i])]
        return _to_rgb(img)

    def describe(self) -> dict:
        return {**super().describe(), "source": type(self.tv).__name__}


class ImageFiles(ImageDataset):
    """A dataset of image files listed in ``files`` (paths relative to ``image_dir``), read in
    that order and converted to RGB."""

    image_dir: Path
    files: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def image(self, i: int) -> Image.Image:
        with Image.open(self.image_dir / self.files[i]) as im:
            return im.convert("RGB")


class CocoCaptions(ImageFiles):
    """COCO 2017 images of one split with their captions (no class labels).

    Images are ordered by image id; ``captions[i]`` lists image ``i``'s captions (usually 5)
    and ``image_ids[i]`` its COCO id.
    """

    def __init__(self, root: str | os.PathLike, split: str, name: str = "coco2017"):
        root = Path(root)
        ann = root / "annotations" / f"captions_{split}2017.json"
        if not ann.exists():
            raise FileNotFoundError(ann)
        data = json.loads(ann.read_text())
        images = sorted(data["images"], key=lambda d: d["id"])
        caps: dict[int, list[str]] = {d["id"]: [] for d in images}
        for a in sorted(data["annotations"], key=lambda a: a["id"]):
            caps.setdefault(a["image_id"], []).append(a["caption"].strip())
        self.name, self.split = name, split
        self.image_dir = root / f"{split}2017"
        self.image_ids = np.asarray([d["id"] for d in images], dtype=np.int64)
        self.files = [d["file_name"] for d in images]
        self.captions = [caps[d["id"]] for d in images]
        self.labels, self.classnames = None, None


class Cc3mCaptions(ImageFiles):
    """Conceptual Captions (CC3M) in LaCLIP's CSV layout: ``{root}/{split}.csv`` lists one image
    per row as ``image,caption``, the image path relative to ``root`` (read with :mod:`csv`, so
    a quoted caption may hold commas, quotes and line breaks; UTF-8, a byte-order mark is
    ignored).

    * A first row naming its columns is a header: one cell an image column name (``image``,
      ``image_path``, ``filepath``, ...) and one a caption column name (``caption``, ``text``,
      ``title``); those two columns are read, in either order.  Without a header the first
      column is the image and the second the caption.  Further columns are ignored and blank
      lines skipped.
    * Only rows whose image ends in .jpg, .jpeg, .png or .webp (any case) are kept, in the
      CSV's order (a listing of img2dataset's output also holds .txt/.json side files).
    * ``files[i]`` is image ``i``'s path relative to ``root`` and ``captions[i]`` a one-element
      list ``[caption]`` (stripped): the shape of :class:`CocoCaptions`' captions, so a
      consumer reads ``captions[i][0]`` of either.  No labels.

    A missing CSV, a row with fewer columns than the image and caption need, an empty caption
    or a CSV without image rows raise :class:`ValueError` naming the file (and the line).
    Images are opened only when read (a missing one raises then).
    """

    SPLITS = ("train", "val")
    IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
    IMAGE_COLUMNS = ("image", "image_path", "img", "img_path", "filepath", "file", "filename",
                     "path")
    CAPTION_COLUMNS = ("caption", "captions", "text", "title")

    def __init__(self, root: str | os.PathLike, split: str, name: str = "cc3m"):
        _need(split, self.SPLITS, name)
        root = Path(root)
        self.image_dir, self.name, self.split = root, name, split
        self.csv = root / f"{split}.csv"
        if not self.csv.is_file():
            present = sorted(p.name for p in root.glob("*.csv")) if root.is_dir() else []
            raise ValueError(f"{name}: {self.csv} does not exist (the {split} split's "
                             f"image,caption rows; CSV files present: {present or 'none'}); "
                             f"see the {name} entry of cliplens/core/data/catalog.yaml")
        self.files, self.captions = [], []
        with open(self.csv, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            cols, first = (0, 1), True
            for row in reader:
                if not any(c.strip() for c in row):
                    continue  # a blank line
                if first:  # a header names its columns (no image path is such a name)
                    first, header = False, [c.strip().lower() for c in row]
                    img = [k for k, c in enumerate(header) if c in self.IMAGE_COLUMNS]
                    cap = [k for k, c in enumerate(header) if c in self.CAPTION_COLUMNS]
                    if img and cap:
                        cols = (img[0], cap[0])
                        continue
                where = f"{self.csv}, line {reader.line_num}"
                if len(row) <= max(cols):
                    raise ValueError(f"{where}: {len(row)} column(s) {row!r}; each row needs an "
                                     f"image path and a caption (image,caption)")
                image, caption = row[cols[0]].strip(), row[cols[1]].strip()
                if not image.lower().endswith(self.IMAGE_SUFFIXES):
                    continue
                if not caption:
                    raise ValueError(f"{where}: image {image!r} has an empty caption")
                self.files.append(image)
                self.captions.append([caption])
        if not self.files:
            raise ValueError(f"{self.csv} lists no images (.jpg, .jpeg, .png or .webp rows)")
        self.labels, self.classnames = None, None


class Waterbirds(ImageFiles):
    """Waterbirds (``metadata.csv`` of the group_DRO tarball).

    ``labels`` = bird type (0 landbird, 1 waterbird), ``places`` = background (0 land, 1 water),
    ``groups = 2 * label + place`` (worst-group accuracy is taken over these four).
    """

    SPLITS = {"train": 0, "val": 1, "test": 2}

    def __init__(self, root: str | os.PathLike, split: str, name: str = "waterbirds"):
        folder = Path(root) / "waterbird_complete95_forest2water2"
        if split not in self.SPLITS:
            raise ValueError(f"waterbirds has splits {sorted(self.SPLITS)}, not {split!r}")
        with open(folder / "metadata.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["split"]) == self.SPLITS[split]]
        self.name, self.split, self.image_dir = name, split, folder
        self.files = [r["img_filename"] for r in rows]
        self.labels = np.asarray([int(r["y"]) for r in rows], dtype=np.int64)
        self.places = np.asarray([int(r["place"]) for r in rows], dtype=np.int64)
        self.groups = 2 * self.labels + self.places
        self.classnames = ["landbird", "waterbird"]
        self.group_names = ["landbird on land", "landbird on water", "waterbird on land",
                            "waterbird on water"]


class ImageNetSegmentation(ImageDataset):
    """ImageNet-segmentation ``gtsegs_ijcv.mat`` (MATLAB v7.3 = HDF5, read with h5py).

    ``/value/img[i, 0]`` references an image stored as [3, W, H] uint8; ``/value/gt[i, 0]``
    references a cell whose first element is the mask stored as [W, H].  ``mask(i)`` returns a
    bool array [H, W] (foreground = True).  No class labels.
    """

    #: what a damaged file's error advises (the file is downloaded, not built)
    HINT = "delete it and its dataset's .ready marker, then rerun to download it again"

    def __init__(self, path: str | os.PathLike, split: str = "test", name: str = "imagenet-seg"):
        from ..io import open_h5

        self.path, self.name, self.split = str(path), name, split
        self._h5 = open_h5(self.path, self.HINT)
        self._n = int(self._h5["/value/img"].shape[0])
        self.labels, self.classnames = None, None

    def __len__(self) -> int:
        return self._n

    def _read(self, what: str, i: int, read) -> np.ndarray:
        from ..io import reading

        with reading(self.path, f"value/{what}[{i}]", self.HINT):
            return read()

    def image(self, i: int) -> Image.Image:
        arr = self._read("img", i, lambda: np.asarray(self._h5[self._h5["/value/img"][i, 0]]))
        arr = arr.transpose(2, 1, 0)
        return Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8))).convert("RGB")

    def mask(self, i: int) -> np.ndarray:
        def read():
            cell = self._h5[self._h5["/value/gt"][i, 0]]
            return np.asarray(self._h5[cell[0, 0]])

        return self._read("gt", i, read).T > 0


class PascalContext59(ImageDataset):
    """PASCAL Context's 59-class segmentation benchmark, in the layout the published evaluation
    reads (mmsegmentation's conversion of the Detail API annotations):

    ``VOC2010/JPEGImages/{id}.jpg``, ``VOC2010/SegmentationClassContext/{id}.png`` (one uint8
    per pixel: 0 = none of the 59 classes, k = 1..59 the k-th of
    :data:`~cliplens.core.text.textsets.PASCAL_CONTEXT_59`) and the ids of a split in
    ``VOC2010/ImageSets/SegmentationContext/{split}.txt`` (train 4,996, val 5,104).

    ``class_mask(i)`` is int64 [H, W]: the class index 0..58, or :attr:`IGNORE` (255) where the
    pixel is none of the 59 (the benchmark's reduce-zero-label convention).  No image labels.
    """

    IGNORE = 255
    SPLITS = ("train", "val")

    def __init__(self, root: str | os.PathLike, split: str):
        from ..text.textsets import PASCAL_CONTEXT_59

        _need(split, self.SPLITS, "pascal-context")
        self.root, self.name, self.split = Path(root) / "VOC2010", "pascal-context", split
        ids = self.root / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        self.ids = [line.strip() for line in ids.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise ValueError(f"{ids} lists no images")
        self.labels, self.classnames = None, list(PASCAL_CONTEXT_59)

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, i: int) -> Image.Image:
        return Image.open(self.root / "JPEGImages" / f"{self.ids[i]}.jpg").convert("RGB")

    def class_mask(self, i: int) -> np.ndarray:
        path = self.root / "SegmentationClassContext" / f"{self.ids[i]}.png"
        raw = np.asarray(Image.open(path), dtype=np.int64)
        if raw.ndim != 2 or raw.max() > 59:
            raise ValueError(f"{path} is not a 59-class label map (shape {raw.shape}, values up "
                             f"to {raw.max()}): convert the annotations as the catalog says")
        return np.where(raw == 0, self.IGNORE, raw - 1)

    def describe(self) -> dict:
        return {"dataset": self.name, "split": self.split, "n": len(self)}


def _split_indices(n: int, split: str, every: int = 5) -> np.ndarray | None:
    """Deterministic split of a dataset that ships without one: ``test`` = every ``every``-th
    sample (index % every == 0; class-stratified when samples are grouped by class), ``train``
    = the rest, ``all`` = everything."""
    idx = np.arange(n)
    if split == "all":
        return idx
    if split == "test":
        return idx[idx % every == 0]
    if split == "train":
        return idx[idx % every != 0]
    raise ValueError(f"split must be train, test or all, not {split!r}")


def _tv(name: str, root: Path, split: str) -> ImageDataset:
    import torchvision.datasets as tvd

    r = str(root)
    _need(split, SPLITS[name], name)
    if name == "cifar10":
        tv = tvd.CIFAR10(r, train=split == "train", download=False)
    elif name == "cifar100":
        tv = tvd.CIFAR100(r, train=split == "train", download=False)
    elif name == "food101":
        tv = tvd.Food101(r, split=split, download=False)
    elif name == "stl10":
        tv = tvd.STL10(r, split=split, download=False)
    elif name == "pets":
        tv = tvd.OxfordIIITPet(r, split=split, target_types="category", download=False)
    elif name == "dtd":
        tv = tvd.DTD(r, split=split, partition=1, download=False)
    elif name == "stanford-cars":
        tv = tvd.StanfordCars(r, split=split, download=False)
    elif name == "eurosat":
        tv = tvd.EuroSAT(r, download=False)
        return TorchvisionDataset(name, split, tv, _classnames(name, tv.classes),
                                  _split_indices(len(tv.targets), split), r)
    elif name == "caltech101":
        tv = tvd.Caltech101(r, target_type="category", download=False)
        return TorchvisionDataset(name, split, tv, _classnames(name, tv.categories),
                                  _split_indices(len(tv.y), split), r)
    elif name == "imagenet":
        tv = tvd.ImageNet(r, split="val")
        names = list(open_clip_metadata().IMAGENET_CLASSNAMES)
        return TorchvisionDataset(name, split, tv, names, None, r)
    else:  # pragma: no cover - LOADERS and this function list the same names
        raise KeyError(name)
    return TorchvisionDataset(name, split, tv, _classnames(name, tv.classes), None, r)


def _need(split: str, allowed: Sequence[str], name: str) -> None:
    if split not in allowed:
        raise ValueError(f"{name} has splits {list(allowed)}, not {split!r}")


#: the real datasets whose images carry captions (``ds.captions[i]``: a list of captions)
CAPTIONED = ("coco2017", "cc3m")

#: dataset name -> the splits its loader accepts (checked when the workflow plans)
SPLITS: dict[str, tuple[str, ...]] = {
    "cifar10": ("train", "test"), "cifar100": ("train", "test"),
    "food101": ("train", "test"), "stl10": ("train", "test", "unlabeled", "train+unlabeled"),
    "pets": ("trainval", "test"), "dtd": ("train", "val", "test"),
    "stanford-cars": ("train", "test"), "eurosat": ("train", "test", "all"),
    "caltech101": ("train", "test", "all"), "imagenet": ("val",),
    "coco2017": ("train", "val"), "cc3m": Cc3mCaptions.SPLITS,
    "waterbirds": tuple(Waterbirds.SPLITS),
    "imagenet-seg": ("test",), "pascal-context": PascalContext59.SPLITS,
}

#: dataset name -> loader(root folder, split) -> ImageDataset
LOADERS: dict[str, Callable[[Path, str], ImageDataset]] = {
    **{n: (lambda root, split, _n=n: _tv(_n, root, split))
       for n in ("cifar10", "cifar100", "food101", "stl10", "pets", "dtd", "eurosat",
                 "caltech101", "imagenet", "stanford-cars")},
    "coco2017": lambda root, split: CocoCaptions(root, split),
    "cc3m": lambda root, split: Cc3mCaptions(root, split),
    "waterbirds": lambda root, split: Waterbirds(root, split),
    "imagenet-seg": lambda root, split: ImageNetSegmentation(root / "gtsegs_ijcv.mat", split),
    "pascal-context": lambda root, split: PascalContext59(root, split),
}
