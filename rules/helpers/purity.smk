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


def purity_outputs():
    """Every output of study 004."""
    return [
        f"{R}/tables/purity/compare.csv",
        f"{R}/tables/purity/pruning.csv",
        f"{R}/figures/purity/compare.png",
        f"{R}/figures/purity/pruning.png",
    ]
