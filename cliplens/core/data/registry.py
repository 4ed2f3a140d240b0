"""One registry from a dataset name (and split) to an :class:`ImageDataset`.

``open_dataset(name, split, results=..., resources=...)``:

* toy datasets (``toy``, ``toy-spurious``, ``toy-shift``, ``toy-colour-ops``) read
  ``{results}/data/toy/{name}.h5`` (written by ``rules/toy.smk``) through
  :class:`~cliplens.core.data.toy.ToyDataset`;
* real datasets read ``{resources}/datasets/{name}/``, the folder ``rules/data.smk`` downloads
  and extracts into (or the user fills, for manual datasets; see ``catalog.yaml``), through the
  readers of :mod:`cliplens.core.data.readers`.

Adding a dataset is one entry in ``catalog.yaml`` (where the files come from) and one entry in
:data:`~cliplens.core.data.readers.LOADERS` (how to read them).  Zero-shot tasks are
:mod:`cliplens.core.data.tasks`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

from ..toy import world
from .archives import check_manual
from .base import ImageDataset
from .catalog import READY, _catalog, dataset_entry, load_catalog
from .readers import LOADERS

TOY_DATASETS: tuple[str, ...] = tuple(world.TOY_DATASETS)


class DatasetNotReadyError(FileNotFoundError):
    """A dataset's files are not on disk; the message names the Snakemake target that makes them."""


def dataset_root(name: str, resources: str | os.PathLike) -> Path:
    """Folder of real dataset ``name``: ``{resources}/datasets/{name}``."""
    return Path(resources) / "datasets" / name


def open_dataset(name: str, split: str, *, results: str | os.PathLike,
                 resources: str | os.PathLike, **kwargs: Any) -> ImageDataset:
    """Open split ``split`` of dataset ``name`` as an :class:`ImageDataset`.

    Toy names read ``{results}/data/toy/{name}.h5`` (``kwargs``: ``label_key``, ``image_key``
    of :class:`~cliplens.core.data.toy.ToyDataset`); real names read ``{resources}/datasets/{name}``.
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
    ``split``'s files.  (``rules/common.smk``'s ``dataset_inputs`` is this with R and RES.)
    """
    if name in TOY_DATASETS:
        return [f"{results}/data/toy/{name}.h5"]
    datasets = _catalog()["datasets"]
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
