"""Zero-shot classification tasks: dataset, split, label key, class names and templates.

``get_task(name)`` returns a :class:`Task`.  ``resolve_templates(spec)`` turns
``"openai_imagenet"`` (open_clip's 80 OpenAI ImageNet prompts), ``"simple"`` (``"a photo of a
{}."``), ``"simple_imagenet"`` (open_clip's 7 simple ImageNet prompts), ``"toy:<factor>"`` (the
toy world's prompts) or a list into format strings with one ``{}`` each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..toy import world
from .base import ImageDataset
from .readers import open_clip_metadata
from .registry import TOY_DATASETS, open_dataset



#: the default template set for real datasets
SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
TEMPLATE_SETS = ("openai_imagenet", "simple", "simple_imagenet", "toy:<factor>")


def resolve_templates(spec: str | Sequence[str], label_key: str | None = None) -> tuple[str, ...]:
    """Format strings (exactly one ``{}`` each) for a template spec.

    ``"openai_imagenet"``: open_clip's ``OPENAI_IMAGENET_TEMPLATES`` (80); ``"simple"``:
    ``("a photo of a {}.",)``; ``"simple_imagenet"``: open_clip's ``SIMPLE_IMAGENET_TEMPLATES``
    (7); ``"toy:<factor>"``: ``world.ZEROSHOT_TEMPLATES[factor]`` (``"toy"`` alone uses
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
            if factor not in world.ZEROSHOT_TEMPLATES:
                raise ValueError(f"template spec {spec!r}: toy factor must be one of "
                                 f"{sorted(world.ZEROSHOT_TEMPLATES)}, got {factor!r}")
            out = tuple(world.ZEROSHOT_TEMPLATES[factor])
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
    names = world.classnames("shape")
    out = []
    for k in (0, 1):
        vals = np.unique(shape[y == k])
        if len(vals) != 1:
            raise ValueError(f"toy-spurious: class {k} has shapes {vals}; expected exactly one")
        out.append(names[int(vals[0])])
    return out


TASKS: dict[str, Task] = {
    **{f"toy-{f}": Task(f"toy-{f}", "toy", "test", f, tuple(world.classnames(f)), f"toy:{f}")
       for f in (*world.FACTORS, "object")},
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
    # classes only (no image labels): the class texts of segmentation on PASCAL Context-59
    "pascal-context": Task("pascal-context", "pascal-context", "val", None, None,
                           "openai_imagenet"),
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
