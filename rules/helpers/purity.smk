# Helpers of rules/purity.smk (functions only; the rules are there).
PU = S.purity
PU_MODELS = [model_slug(m) for m in PU.models]


def purity_eval_inputs(wildcards):
    """The model's neuron scores, and the embeddings cache and dataset files of the task."""
    task = get_task(wildcards.task)
    return {
        "scores": f"{R}/purity/{wildcards.model}/weights.npz",
        "cache": cache_path(wildcards.model, task.dataset, task.split),
        "data": split_inputs(task.dataset, task.split),
    }


MIS = PU.misalign


def misalign_runs():
    """Every fine-tune of the misalignment experiment: (model slug, Cs as written, seed)."""
    return [
        (model_slug(m), f"{cs:g}", seed)
        for m in MIS.models
        for cs in MIS.fractions
        for seed in range(MIS.seeds)
    ]


def purity_features_inputs(wildcards):
    """The captioned split and every task's split."""
    out = split_inputs(MIS.dataset, MIS.split)
    for t in PU.tasks:
        task = get_task(t)
        out += split_inputs(task.dataset, task.split)
    return {"data": list(dict.fromkeys(out))}


def purity_outputs():
    """Every output of study 004."""
    out = [
        f"{R}/tables/purity/compare.csv",
        f"{R}/tables/purity/pruning.csv",
        f"{R}/figures/purity/compare.png",
        f"{R}/figures/purity/pruning.png",
    ]
    if MIS.models:
        out += [f"{R}/tables/purity/misalign.csv", f"{R}/figures/purity/misalign.png"]
    return out
