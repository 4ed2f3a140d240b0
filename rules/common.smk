# Path and lookup helpers shared by every rules file.
from pathlib import Path

from cliplens.data.registry import get_task
from cliplens.inversion import extractor_group
from cliplens.operators import OPERATOR_TASKS
from cliplens.specs import parse_model_spec, slugify, unslugify
from cliplens.tokens import VIEW_KEYS

R = config["results"]
RES = config["resources"]


def all_model_specs():
    """Every model spec the config mentions (zero-shot list and trained toy models)."""
    specs = list(config["zeroshot"]["models"])
    specs += [f"toy:{name}" for name in config["toy_models"]]
    return list(dict.fromkeys(specs))


def model_slug(spec):
    return slugify(spec)


def model_spec(slug):
    """Wildcard value -> model spec string."""
    return unslugify(slug)


def model_inputs(slug):
    """Files a job needs before it can load model ``slug``: a toy model's directory, else none
    (real weights come from the Hugging Face cache, see the README)."""
    spec = parse_model_spec(model_spec(slug))
    if spec.scheme == "toy":
        return [f"{R}/models/toy/{spec.name}"]
    return []


def load_params():
    """Keyword arguments of cliplens.models.registry.load_model shared by every job."""
    return {
        "toy_root": f"{R}/models/toy",
        "device": config["device"],
        "hf_home": config["hf_home"],
    }


def data_roots(wildcards, input):
    """Dataset roots as the job sees them, inferred from its ``data`` inputs (so they follow the
    files, e.g. under remote storage): ``{results}/data/toy/NAME.h5`` gives the results root and
    ``{resources}/datasets/NAME/...`` the resources root.  Keyword arguments of
    cliplens.data.registry.open_dataset."""
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


def split_inputs(dataset, *splits):
    """What a job must wait for before opening ``dataset`` at each of ``splits``."""
    out = []
    for split in splits:
        out += list(dataset_inputs(dataset, split))
    return list(dict.fromkeys(out))


# ---- toy world (rules/toy.smk)
TOY_DATASETS = ["toy", "toy-spurious", "toy-shift", "toy-colour-ops"]
_TOY_SECTION = {
    "toy": "splits",
    "toy-spurious": "spurious",
    "toy-shift": "shift",
    "toy-colour-ops": "colour_ops",
}


def toy_world_params(dataset):
    """Only what drawing ``dataset`` depends on, so editing one section reruns one dataset."""
    cfg = config["toy"]
    out = {k: cfg[k] for k in ("seed", "image_size", "noise", "textured_background")}
    section = _TOY_SECTION[dataset]
    out[section] = cfg[section]
    return out


# ---- caches (rules/cache.smk)
def gpu_resource(wildcards):
    """`gpu` resource of jobs that run a model: 0 when config says device "cpu", or "auto" in a
    local run that sees no CUDA device (nothing to wait for: model jobs then run side by side);
    else 1 ("auto" on a cluster may pick a GPU on the node, so the job must hold one).  A
    function of the job, so it is evaluated once the executor is known (while the Snakefile is
    parsed, every run still looks local).
    """
    if config["device"] == "cpu":
        return 0
    if config["device"] == "auto" and workflow.local_exec and not _cuda_visible():
        return 0
    return 1


def _cuda_visible():
    import torch

    return torch.cuda.is_available()


def toy_train_priority(wildcards):
    """Longest training first: the toy model's optimiser steps x pairs per step, in thousands.
    Among jobs that are ready, Snakemake starts higher priorities first, so the longest
    training (the toy CLIP) does not start last and stretch the run."""
    train = config["toy_models"][wildcards.toy_model]["train"]
    return int(train["steps"]) * int(train["batch_size"]) / 1000.0


def model_threads(slug):
    """Torch threads of a job running model ``slug``: 1 for toy models (too small to gain from
    intra-op threads; jobs run side by side instead), 8 for real ones (Snakemake caps it at
    --cores)."""
    return 1 if model_spec(slug).startswith("toy:") else 8


def cache_threads(wildcards):
    return model_threads(wildcards.model)


def cache_shard_paths(wildcards):
    n = config["cache"]["shards"]
    return [
        f"{R}/cache/{wildcards.model}/{wildcards.dataset}/{wildcards.split}/shards/"
        f"embeddings.{i}-of-{n}.h5"
        for i in range(n)
    ]


def cache_path(model_slug, dataset, split):
    """The gathered embeddings cache of (model slug, dataset, split)."""
    return f"{R}/cache/{model_slug}/{dataset}/{split}/embeddings.h5"


# ---- zero-shot (rules/zeroshot.smk)
def zeroshot_templates(task_name):
    """Format strings of the task's own template set, or of config["zeroshot"]["templates"]."""
    override = config["zeroshot"]["templates"].get(task_name)
    return list(get_task(task_name).resolved_templates(override))


def zeroshot_classnames(task_name):
    """The task's class names when the registry fixes them; None = the dataset's own (read by
    the job once the dataset exists)."""
    names = get_task(task_name).classnames
    return None if names is None or callable(names) else list(names)


def zeroshot_json_paths():
    return expand(
        f"{R}/zeroshot/{{model}}/{{task}}.json",
        model=[model_slug(m) for m in config["zeroshot"]["models"]],
        task=config["zeroshot"]["tasks"],
    )


# ---- study 000: inversion (rules/inversion.smk)
INV = config["inversion"]
INV_OPS = INV["operators"]
INV_VIEWS = list(VIEW_KEYS)
INV_OP_SLUG = model_slug(INV_OPS["model"])


def _toy_family(spec):
    p = parse_model_spec(spec)
    if p.scheme == "toy" and p.name in config["toy_models"]:
        return config["toy_models"][p.name]["family"]
    return None


def inv_group(spec):
    """Label of extractor ``spec`` in v1_vs_v2.png (config inversion.groups, else by name)."""
    return extractor_group(spec, _toy_family(spec), INV["groups"])


def token_cache_path(slug, dataset, split, key="images", rows=None):
    """The gathered token cache of one image view of (model slug, dataset, split), first
    ``rows`` images (None = all), at config inversion.layer."""
    rows = "all" if rows is None else int(rows)
    return (
        f"{R}/cache/{slug}/{dataset}/{split}/tokens/{key}.layer{INV['layer']}.{rows}.h5"
    )


def token_shard_paths(wildcards):
    w = wildcards
    n = INV["token_shards"] or config["cache"]["shards"]
    return [
        f"{R}/cache/{w.model}/{w.dataset}/{w.split}/tokens/shards/"
        f"{w.key}.layer{w.layer}.{w.rows}.{i}-of-{n}.h5"
        for i in range(n)
    ]


def inv_train_tokens(wildcards):
    """The training token cache of a reconstructor, or nothing when tokens are computed online."""
    if INV["train_tokens"] != "cache":
        return []
    return token_cache_path(
        wildcards.model, INV["dataset"], INV["train_split"], rows=INV["train_images"]
    )


def inv_heldout():
    return [f"{R}/inversion/{model_slug(s)}/heldout.h5" for s in INV["extractors"]]


def inv_train_threads(wildcards):
    """Torch threads of a reconstructor's training: 1 beside a toy extractor (several train side
    by side), config inversion.train.threads beside a real one."""
    return (
        1 if model_spec(wildcards.model).startswith("toy:") else INV["train"]["threads"]
    )


def inv_scorer_threads(wildcards):
    return model_threads(wildcards.scorer)


def inv_blue_factor(wildcards):
    """Blue multiplier of an on-the-fly blue suppression; only that view depends on it."""
    return INV_OPS["blue_factor"] if wildcards.key == "images_b_suppressed" else 0.0


def inv_op_caches(split, rows):
    """View key -> token cache of the operator extractor that the configured tasks need."""
    views = []
    for task in INV_OPS["tasks"]:
        views += OPERATOR_TASKS[task][:2]
    return {
        k: token_cache_path(INV_OP_SLUG, INV_OPS["dataset"], split, k, rows)
        for k in dict.fromkeys(views)
    }


# ---- study 001: head direct effects (rules/heads.smk)
HEADS = config["heads"]
HEADS_MODELS = [model_slug(m) for m in HEADS["models"]]


def decomposition_path(slug, dataset, split):
    """The gathered decomposition cache of (model slug, dataset, split)."""
    return f"{R}/cache/{slug}/{dataset}/{split}/decomposition.h5"


def decomposition_shard_paths(wildcards):
    w = wildcards
    n = HEADS["shards"] or config["cache"]["shards"]
    return [
        f"{R}/cache/{w.model}/{w.dataset}/{w.split}/decomposition/shards/{i}-of-{n}.h5"
        for i in range(n)
    ]


def heads_text_files():
    """Text files of heads.textspan.text_sets (file:PATH): editing one re-embeds the texts."""
    sets = HEADS["textspan"]["text_sets"]
    return [t[len("file:") :] for t in sets if t.startswith("file:")]


def heads_fit_cache(wildcards):
    fit = HEADS["fit"]
    return decomposition_path(wildcards.model, fit["dataset"], fit["split"])


def heads_task_caches(wildcards):
    """Task name -> decomposition cache of the task's dataset split."""
    return {
        t: decomposition_path(wildcards.model, get_task(t).dataset, get_task(t).split)
        for t in HEADS["tasks"]
    }


def heads_task_data(wildcards):
    out = []
    for t in HEADS["tasks"]:
        out += split_inputs(get_task(t).dataset, get_task(t).split)
    return list(dict.fromkeys(out))


def heads_factors_enabled():
    return HEADS["factors"]["enabled"] and HEADS["fit"]["dataset"] in TOY_DATASETS


def heads_spurious_caches(wildcards):
    """Decomposition caches of the spurious task's fit split and evaluation split."""
    task = get_task(HEADS["spurious"]["task"])
    return {
        "fit": decomposition_path(
            wildcards.model, task.dataset, HEADS["spurious"]["fit_split"]
        ),
        "eval": decomposition_path(wildcards.model, task.dataset, task.split),
    }


def heads_outputs():
    """Every table and figure of study 001 for each model in config heads.models."""
    out = []
    for m in HEADS_MODELS:
        out += [
            f"{R}/heads/{m}/textspan.txt",
            f"{R}/tables/heads/{m}/replacement.csv",
            f"{R}/figures/heads/{m}/ablation.png",
            f"{R}/figures/heads/{m}/spatial_maps.png",
            f"{R}/figures/heads/{m}/neighbours.png",
        ]
        if heads_factors_enabled():
            out.append(f"{R}/figures/heads/{m}/factors.png")
        if HEADS["spurious"]["task"]:
            out.append(f"{R}/figures/heads/{m}/spurious.png")
    return out


wildcard_constraints:
    model=r"[A-Za-z0-9._@+-]+",
    dataset=r"[A-Za-z0-9_-]+",
    split=r"[A-Za-z0-9_]+",
    toy_model=r"[A-Za-z0-9_-]+",
