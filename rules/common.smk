# Shared helpers of every rules file: paths, model inputs, the GPU resource, shard paths.
# Each rules file keeps its own helpers; nothing here (or anywhere the workflow reads while it
# plans) imports torch.
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from cliplens.core.data.registry import dataset_targets
from cliplens.core.settings.references import planned_shards
from snakemake.logging import logger
from cliplens.core.specs import parse_model_spec, slugify, unslugify

R = S.results
RES = S.resources


def model_slug(spec):
    return slugify(spec)


def model_spec(slug):
    """Wildcard value -> model spec string."""
    return unslugify(slug)


def all_model_specs():
    """Every model spec the config mentions (zero-shot list and trained toy models)."""
    specs = list(S.zeroshot.models) + [f"toy:{name}" for name in S.toy_models]
    return list(dict.fromkeys(specs))


def model_inputs(slug):
    """Files a job needs before it can load model ``slug``: a toy model's directory, a
    hand-placed checkpoint's check marker, else none (real weights come from the Hugging Face
    cache, see the README)."""
    spec = parse_model_spec(model_spec(slug))
    if spec.scheme == "toy":
        return [f"{R}/models/toy/{spec.name}"]
    if spec.scheme == "laclip":
        return [f"{RES}/models/laclip/{spec.name}.ready"]
    return []


def existing(path):
    """``[path]`` when the file exists, else ``[]``: a hand-placed input that a check rule
    asks for by name when it is missing."""
    return [str(path)] if os.path.exists(path) else []


# dataset_inputs(name, split=None): what a job must wait for before opening dataset ``name``
# (toy: its .h5; real: its .ready marker, or for COCO only the archives of ``split``).
def dataset_inputs(name, split=None):
    return dataset_targets(name, split, results=R, resources=RES)


def split_inputs(dataset, *splits):
    """What a job must wait for before opening ``dataset`` at each of ``splits``."""
    out = []
    for split in splits:
        out += list(dataset_inputs(dataset, split))
    return list(dict.fromkeys(out))


def data_roots(wildcards, input):
    """Dataset roots as the job sees them, inferred from its ``data`` inputs (so they follow the
    files, e.g. under remote storage): ``{results}/data/toy/NAME.h5`` gives the results root and
    ``{resources}/datasets/NAME/...`` the resources root."""
    roots = {"results": R, "resources": RES}
    for f in input.data:
        p = Path(f)
        if (
            p.suffix == ".h5"
            and p.parent.name == "toy"
            and p.parent.parent.name == "data"
        ):
            roots["results"] = str(p.parents[2])
        elif "datasets" in p.parts:
            roots["resources"] = str(Path(*p.parts[: p.parts.index("datasets")]) or ".")
    return roots


def shard_paths(folder, stem, n):
    """The ``n`` shard files of one row cache: ``{folder}/shards/{stem}{i}-of-{n}.h5``."""
    return [f"{folder}/shards/{stem}{i}-of-{n}.h5" for i in range(n)]


@lru_cache(maxsize=None)
def shard_count(requested, dataset, split, batch_size, rows=None):
    """Shards of one row cache: ``requested``, capped at one per batch of its rows when they
    are known while planning (toy splits); the cap is stated once in the log."""
    n, why = planned_shards(requested, dataset, split, batch_size, S.toy, rows)
    if why:
        logger.warning(f"cliplens: {why}")
    return n


# ---- the GPU resource
def gpu_resource(wildcards):
    """`gpu` resource of jobs that run a model: 0 when the config says device "cpu", or "auto" in
    a local run that sees no GPU (nothing to wait for: model jobs then run side by side); else 1.
    A function of the job, so it is evaluated once the executor is known."""
    if S.device == "cpu" or (
        S.device == "auto" and workflow.local_exec and not local_gpus()
    ):
        return 0
    return 1


def limit_local_gpus():
    """A local run (Snakemake was given cores, not remote jobs) on a machine with GPUs: limit the
    `gpu` resource to their number, so model jobs take turns on them (unless --resources gpu=N
    says otherwise).  A cluster run gets no limit: its scheduler hands out GPUs.  Called while
    the Snakefile is parsed, before Snakemake's scheduler reads the global resources."""
    if (
        S.device == "cpu"
        or workflow.nodes is not None
        or "gpu" in workflow.global_resources
    ):
        return
    n = (
        local_gpus() if S.device == "auto" else max(local_gpus(), 1)
    )  # cuda, mps: at least 1
    if n:
        workflow.register_resource("gpu", n)


@lru_cache(maxsize=1)
def local_gpus():
    """GPUs this machine offers: CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L` (no torch)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


def model_threads(slug):
    """Torch threads of a job running model ``slug``: 1 for toy models (too small to gain from
    intra-op threads; jobs run side by side instead), 8 for real ones (Snakemake caps it at
    --cores)."""
    return 1 if model_spec(slug).startswith("toy:") else 8


def cache_threads(wildcards):
    return model_threads(wildcards.model)


wildcard_constraints:
    model=r"[A-Za-z0-9._@+-]+",
    dataset=r"[A-Za-z0-9_-]+",
    split=r"[A-Za-z0-9_]+",
    toy_model=r"[A-Za-z0-9_-]+",


limit_local_gpus()
