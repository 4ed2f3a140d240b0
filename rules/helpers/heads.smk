# Helpers of rules/heads.smk (functions only; the rules are there).
from cliplens.core.models.layout import planned_layout

HEADS = S.heads
HEADS_MODELS = [model_slug(m) for m in HEADS.models]


def decomposition_path(slug, dataset, split):
    """The gathered decomposition cache of (model slug, dataset, split)."""
    return f"{R}/cache/{slug}/{dataset}/{split}/decomposition.h5"


def decomposition_shard_paths(wildcards):
    w = wildcards
    folder = f"{R}/cache/{w.model}/{w.dataset}/{w.split}/decomposition"
    n = shard_count(
        HEADS.shards or S.cache.shards, w.dataset, w.split, HEADS.batch_size
    )
    return shard_paths(folder, "", n)


def maps_layers(wildcards):
    """Blocks the spatial maps sum over (the last heads.segmentation.layers, at most the
    model's), when its layout is known while planning, else None: for the report's caption.
    """
    layout = planned_layout(model_spec(wildcards.model), S.toy_models)
    if layout is None:
        return None
    return min(HEADS.segmentation.layers, layout.blocks)


def heads_text_files():
    """Text files of heads.textspan.text_sets (file:PATH): editing one re-embeds the texts."""
    return [
        t[len("file:") :] for t in HEADS.textspan.text_sets if t.startswith("file:")
    ]


def heads_fit_cache(wildcards):
    return decomposition_path(wildcards.model, HEADS.fit.dataset, HEADS.fit.split)


def heads_task_caches(wildcards):
    """Task name -> decomposition cache of the task's dataset split."""
    return {
        t: decomposition_path(wildcards.model, get_task(t).dataset, get_task(t).split)
        for t in HEADS.tasks
    }


def heads_task_data(wildcards):
    out = []
    for t in HEADS.tasks:
        out += split_inputs(get_task(t).dataset, get_task(t).split)
    return list(dict.fromkeys(out))


def heads_factors_enabled():
    return HEADS.factors.enabled and HEADS.fit.dataset in TOY_DATASETS


def heads_spurious_caches(wildcards):
    """Decomposition caches of the spurious task's fit split and evaluation split."""
    task = get_task(HEADS.spurious.task)
    return {
        "fit": decomposition_path(
            wildcards.model, task.dataset, HEADS.spurious.fit_split
        ),
        "eval": decomposition_path(wildcards.model, task.dataset, task.split),
    }


def heads_outputs():
    """Every table and figure of study 001 for each model in heads.models."""
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
        if HEADS.spurious.task:
            out.append(f"{R}/figures/heads/{m}/spurious.png")
    return out
