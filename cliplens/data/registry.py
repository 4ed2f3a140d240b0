"""One registry from a dataset name (and split) to an :class:`ImageDataset`, and the zero-shot tasks.

Datasets
--------
``open_dataset(name, split, results=..., resources=...)``:

* toy datasets (``toy``, ``toy-spurious``, ``toy-shift``, ``toy-colour-ops``) read
  ``{results}/data/toy/{name}.h5`` (written by ``rules/toy.smk``) through
  :class:`~cliplens.data.toy.ToyDataset`;
* real datasets read ``{resources}/datasets/{name}/``, the folder ``rules/data.smk`` downloads
  and extracts into (or the user fills, for manual datasets; see ``catalog.yaml``), through
  torchvision's dataset classes with ``download=False`` or a small reader here (COCO captions,
  Waterbirds, ImageNet-segmentation).

Adding a dataset is one entry in ``catalog.yaml`` (where the files come from) and one entry in
:data:`LOADERS` (how to read them).

Tasks
-----
``get_task(name)`` returns a :class:`Task`: dataset, split, label key, class names and templates.
``resolve_templates(spec)`` turns ``"openai_imagenet"`` (open_clip's 80 OpenAI ImageNet prompts),
``"simple"`` (``"a photo of a {}."``), ``"simple_imagenet"`` (open_clip's 7 simple ImageNet
prompts), ``"toy:<factor>"`` (the toy world's prompts) or a list into format strings with one
``{}`` each.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from .. import toyworld
from .base import ImageDataset
from .download import READY, check_manual, dataset_entry, load_catalog

TOY_DATASETS: tuple[str, ...] = tuple(toyworld.TOY_DATASETS)


class DatasetNotReadyError(FileNotFoundError):
    """A dataset's files are not on disk; the message names the Snakemake target that makes them."""


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


class CocoCaptions(ImageDataset):
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

    def __len__(self) -> int:
        return len(self.files)

    def image(self, i: int) -> Image.Image:
        with Image.open(self.image_dir / self.files[i]) as im:
            return im.convert("RGB")


class Waterbirds(ImageDataset):
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
        self.name, self.split, self.folder = name, split, folder
        self.files = [r["img_filename"] for r in rows]
        self.labels = np.asarray([int(r["y"]) for r in rows], dtype=np.int64)
        self.places = np.asarray([int(r["place"]) for r in rows], dtype=np.int64)
        self.groups = 2 * self.labels + self.places
        self.classnames = ["landbird", "waterbird"]
        self.group_names = ["landbird on land", "landbird on water", "waterbird on land",
                            "waterbird on water"]

    def __len__(self) -> int:
        return len(self.files)

    def image(self, i: int) -> Image.Image:
        with Image.open(self.folder / self.files[i]) as im:
            return im.convert("RGB")


class ImageNetSegmentation(ImageDataset):
    """ImageNet-segmentation ``gtsegs_ijcv.mat`` (MATLAB v7.3 = HDF5, read with h5py).

    ``/value/img[i, 0]`` references an image stored as [3, W, H] uint8; ``/value/gt[i, 0]``
    references a cell whose first element is the mask stored as [W, H].  ``mask(i)`` returns a
    bool array [H, W] (foreground = True).  No class labels.
    """

    def __init__(self, path: str | os.PathLike, split: str = "test", name: str = "imagenet-seg"):
        import h5py

        self.path, self.name, self.split = str(path), name, split
        self._h5 = h5py.File(self.path, "r")
        self._n = int(self._h5["/value/img"].shape[0])
        self.labels, self.classnames = None, None

    def __len__(self) -> int:
        return self._n

    def image(self, i: int) -> Image.Image:
        arr = np.asarray(self._h5[self._h5["/value/img"][i, 0]]).transpose(2, 1, 0)
        return Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8))).convert("RGB")

    def mask(self, i: int) -> np.ndarray:
        cell = self._h5[self._h5["/value/gt"][i, 0]]
        return np.asarray(self._h5[cell[0, 0]]).T > 0


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
    if name == "cifar10":
        _need(split, ("train", "test"), name)
        tv = tvd.CIFAR10(r, train=split == "train", download=False)
    elif name == "cifar100":
        _need(split, ("train", "test"), name)
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
        _need(split, ("val",), name)
        tv = tvd.ImageNet(r, split="val")
        names = list(open_clip_metadata().IMAGENET_CLASSNAMES)
        return TorchvisionDataset(name, split, tv, names, None, r)
    else:  # pragma: no cover - LOADERS and this function list the same names
        raise KeyError(name)
    return TorchvisionDataset(name, split, tv, _classnames(name, tv.classes), None, r)


def _need(split: str, allowed: Sequence[str], name: str) -> None:
    if split not in allowed:
        raise ValueError(f"{name} has splits {list(allowed)}, not {split!r}")


#: dataset name -> loader(root folder, split) -> ImageDataset
LOADERS: dict[str, Callable[[Path, str], ImageDataset]] = {
    **{n: (lambda root, split, _n=n: _tv(_n, root, split))
       for n in ("cifar10", "cifar100", "food101", "stl10", "pets", "dtd", "eurosat",
                 "caltech101", "imagenet", "stanford-cars")},
    "coco2017": lambda root, split: CocoCaptions(root, split),
    "waterbirds": lambda root, split: Waterbirds(root, split),
    "imagenet-seg": lambda root, split: ImageNetSegmentation(root / "gtsegs_ijcv.mat", split),
}


def dataset_root(name: str, resources: str | os.PathLike) -> Path:
    """Folder of real dataset ``name``: ``{resources}/datasets/{name}``."""
    return Path(resources) / "datasets" / name


def open_dataset(name: str, split: str, *, results: str | os.PathLike,
                 resources: str | os.PathLike, **kwargs: Any) -> ImageDataset:
    """Open split ``split`` of dataset ``name`` as an :class:`ImageDataset`.

    Toy names read ``{results}/data/toy/{name}.h5`` (``kwargs``: ``label_key``, ``image_key``
    of :class:`~cliplens.data.toy.ToyDataset`); real names read ``{resources}/datasets/{name}``.
    A missing dataset raises :class:`DatasetNotReadyError` naming the Snakemake target to build.
    """
    if name in TOY_DATASETS:
        from .toy import ToyDataset

        path = Path(results) / "data" / "toy" / f"{name}.h5"
        if not path.exists():
            raise DatasetNotReadyError(f"toy dataset {name!r} is not generated yet: run "
                                       f"`snakemake --cores 2 {path}`")
        return ToyDataset(path, split, name=name, **kwargs)
    if name not in LOADERS:
        raise KeyError(f"unknown dataset {name!r}; known: "
                       f"{sorted([*TOY_DATASETS, *LOADERS])}")
    if kwargs:
        raise TypeError(f"unexpected options for {name}: {sorted(kwargs)}")
    root = dataset_root(name, resources)
    entry = dataset_entry(name)
    if entry.get("manual"):
        check_manual(name, root)  # raises with the instructions
    try:
        return LOADERS[name](root, split)
    except (FileNotFoundError, RuntimeError) as err:
        if isinstance(err, DatasetNotReadyError):
            raise
        raise DatasetNotReadyError(
            f"dataset {name!r} (split {split!r}) could not be read from {root}: {err}. "
            f"Build it with `snakemake --cores 1 {root / READY}`"
            + (" (downloads and verifies it)" if not entry.get("manual") else "")) from err


def prepare_manual(name: str, root: str | os.PathLike) -> None:
    """One-off preparation of a checked manual dataset (ImageNet: torchvision parses the devkit
    and unpacks the validation tar, checking their MD5s).  Other datasets need none."""
    if name == "imagenet":
        import torchvision.datasets as tvd

        tvd.ImageNet(str(root), split="val")


def dataset_targets(name: str, split: str | None = None, *, results: str,
                    resources: str) -> list[str]:
    """The files a workflow job must wait for before it can open dataset ``name``.

    Toy datasets: ``{results}/data/toy/{name}.h5``.  Real datasets:
    ``{resources}/datasets/{name}/.ready``, or, when the catalog entry lists ``split_files``
    (COCO), only the extraction markers ``{resources}/datasets/{name}/.extracted/{file}`` of
    ``split``'s files.  (``rules/data.smk``'s ``dataset_inputs`` is this with R and RES.)
    """
    if name in TOY_DATASETS:
        return [f"{results}/data/toy/{name}.h5"]
    datasets = load_catalog()["datasets"]
    if name not in datasets:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted([*TOY_DATASETS, *datasets])}")
    split_files = datasets[name].get("split_files", {})
    if split is not None and split in split_files:
        return [f"{resources}/datasets/{name}/.extracted/{f}" for f in split_files[split]]
    return [f"{resources}/datasets/{name}/{READY}"]


def wildcard_alternatives(names: Sequence[str]) -> str:
    """A wildcard regex matching exactly ``names``."""
    return "|".join(re.escape(n) for n in names)


def known_datasets() -> list[str]:
    """Every dataset name: toy ones and those in the catalog."""
    return [*TOY_DATASETS, *load_catalog()["datasets"]]


# ---------------------------------------------------------------------------------------------
# Zero-shot tasks

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


#: the default template set for real datasets
SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
TEMPLATE_SETS = ("openai_imagenet", "simple", "simple_imagenet", "toy:<factor>")


def resolve_templates(spec: str | Sequence[str], label_key: str | None = None) -> tuple[str, ...]:
    """Format strings (exactly one ``{}`` each) for a template spec.

    ``"openai_imagenet"``: open_clip's ``OPENAI_IMAGENET_TEMPLATES`` (80); ``"simple"``:
    ``("a photo of a {}.",)``; ``"simple_imagenet"``: open_clip's ``SIMPLE_IMAGENET_TEMPLATES``
    (7); ``"toy:<factor>"``: ``toyworld.ZEROSHOT_TEMPLATES[factor]`` (``"toy"`` alone uses
    ``label_key``); a list or tuple: itself, validated.
    """
    if isinstance(spec, str):
        if spec in ("openai_imagenet", "simple_imagenet"):
            zsm = open_clip_metadata()
            fns = (zsm.OPENAI_IMAGENET_TEMPLATES if spec == "openai_imagenet"
                   else zsm.SIMPLE_IMAGENET_TEMPLATES)
            out = tuple(f("{}") for f in fns)
        elif spec == "simple":
            out = SIMPLE_TEMPLATES
        elif spec == "toy" or spec.startswith("toy:"):
            factor = spec[4:] if spec.startswith("toy:") else label_key
            if factor not in toyworld.ZEROSHOT_TEMPLATES:
                raise ValueError(f"template spec {spec!r}: toy factor must be one of "
                                 f"{sorted(toyworld.ZEROSHOT_TEMPLATES)}, got {factor!r}")
            out = tuple(toyworld.ZEROSHOT_TEMPLATES[factor])
        else:
            raise ValueError(f"unknown template set {spec!r}; use one of {TEMPLATE_SETS} "
                             "or a list of strings with one '{}' each")
    else:
        out = tuple(spec)
    bad = [t for t in out if not isinstance(t, str) or t.count("{}") != 1
           or t.replace("{}", "").count("{") or t.replace("{}", "").count("}")]
    if not out or bad:
        raise ValueError(f"templates must be a non-empty list of strings with exactly one '{{}}' "
                         f"and no other braces; bad: {bad}")
    return out


Classnames = Sequence[str] | Callable[[ImageDataset], Sequence[str]] | None


@dataclass(frozen=True)
class Task:
    """A zero-shot classification task.

    ``classnames`` is a list, a function of the opened dataset, or None (use the dataset's own
    ``classnames``); ``templates`` is a spec for :func:`resolve_templates`.
    """

    name: str
    dataset: str
    split: str
    label_key: str | None = None
    classnames: Classnames = None
    templates: str | tuple[str, ...] = "simple"

    def resolved_templates(self, override: str | Sequence[str] | None = None) -> tuple[str, ...]:
        return resolve_templates(self.templates if override is None else override,
                                 self.label_key)

    def classnames_for(self, ds: ImageDataset) -> list[str]:
        if callable(self.classnames):
            names = self.classnames(ds)
        elif self.classnames is not None:
            names = self.classnames
        else:
            names = ds.classnames
        if not names:
            raise ValueError(f"task {self.name!r}: dataset {ds.name!r} has no class names")
        return list(names)

    def open(self, *, results: str | os.PathLike, resources: str | os.PathLike) -> ImageDataset:
        """The task's dataset split, with ``labels`` = the task's labels."""
        kw = {"label_key": self.label_key} if self.dataset in TOY_DATASETS else {}
        return open_dataset(self.dataset, self.split, results=results, resources=resources, **kw)


def _spurious_classnames(ds: ImageDataset) -> list[str]:
    """toy-spurious class k is the shape drawn for ``spurious_class == k`` (config ``classes``)."""
    shape, y = ds.factor_labels["shape"], ds.factor_labels["spurious_class"]
    names = toyworld.classnames("shape")
    out = []
    for k in (0, 1):
        vals = np.unique(shape[y == k])
        if len(vals) != 1:
            raise ValueError(f"toy-spurious: class {k} has shapes {vals}; expected exactly one")
        out.append(names[int(vals[0])])
    return out


TASKS: dict[str, Task] = {
    **{f"toy-{f}": Task(f"toy-{f}", "toy", "test", f, tuple(toyworld.classnames(f)), f"toy:{f}")
       for f in (*toyworld.FACTORS, "object")},
    "toy-spurious": Task("toy-spurious", "toy-spurious", "test", "spurious_class",
                         _spurious_classnames, "toy:shape"),
    "cifar10": Task("cifar10", "cifar10", "test"),
    "cifar100": Task("cifar100", "cifar100", "test"),
    "food101": Task("food101", "food101", "test"),
    "stl10": Task("stl10", "stl10", "test"),
    "pets": Task("pets", "pets", "test"),
    "dtd": Task("dtd", "dtd", "test"),
    "eurosat": Task("eurosat", "eurosat", "test"),
    "caltech101": Task("caltech101", "caltech101", "test"),
    "stanford-cars": Task("stanford-cars", "stanford-cars", "test"),
    "waterbirds": Task("waterbirds", "waterbirds", "test"),
    "imagenet": Task("imagenet", "imagenet", "val", None, None, "openai_imagenet"),
}


def get_task(name: str) -> Task:
    """The zero-shot task called ``name`` (see :data:`TASKS`)."""
    if name not in TASKS:
        raise KeyError(f"unknown zero-shot task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def open_task(name: str, *, results: str | os.PathLike, resources: str | os.PathLike,
              templates: str | Sequence[str] | None = None
              ) -> tuple[Task, ImageDataset, list[str], tuple[str, ...]]:
    """(task, dataset split, class names, templates) of task ``name``; ``templates`` overrides."""
    task = get_task(name)
    ds = task.open(results=results, resources=resources)
    return task, ds, task.classnames_for(ds), task.resolved_templates(templates)


__all__ = [
    "TOY_DATASETS", "LOADERS", "TASKS", "Task", "DatasetNotReadyError", "TorchvisionDataset",
    "CocoCaptions", "Waterbirds", "ImageNetSegmentation", "clean_classname", "dataset_root",
    "open_dataset", "prepare_manual", "known_datasets", "dataset_targets",
    "wildcard_alternatives", "resolve_templates", "get_task",
    "open_task", "SIMPLE_TEMPLATES", "open_clip_metadata",
]
