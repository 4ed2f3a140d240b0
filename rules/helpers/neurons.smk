# Helpers of rules/neurons.smk (functions only; the rules are there).
from cliplens.core.models.layout import planned_tower

NEURONS = S.neurons
NEURONS_MODELS = [model_slug(m) for m in NEURONS.models]


def neurons_rows(images):
    """The store folder's name for ``images`` images: "all" or the count."""
    return "all" if images is None else str(images)


def neurons_store_path(slug, dataset=None, split=None, images=0):
    """The gathered store of model ``slug`` over ``images`` images of dataset/split (default:
    the components' neurons.dataset/split/images)."""
    if dataset is None:
        dataset, split, images = NEURONS.dataset, NEURONS.split, NEURONS.images
    return f"{R}/neurons/{slug}/{dataset}/{split}/{neurons_rows(images)}/store.h5"


def neurons_images(wildcards):
    return None if wildcards.rows == "all" else int(wildcards.rows)


def neurons_store_shards(wildcards):
    w = wildcards
    n = shard_count(
        NEURONS.shards or S.cache.shards,
        w.dataset,
        w.split,
        NEURONS.batch_size,
        neurons_images(w),
    )
    folder = f"{R}/neurons/{w.model}/{w.dataset}/{w.split}/{w.rows}/store"
    return shard_paths(folder, "", n)


def neurons_effects_inputs(wildcards):
    """The store of the effects task's split, and that split's dataset files."""
    task = get_task(NEURONS.effects.task)
    store = neurons_store_path(
        wildcards.model, task.dataset, task.split, NEURONS.effects.images
    )
    return {"store": store, "data": split_inputs(task.dataset, task.split)}


def neurons_task_inputs(task_name):
    """The dataset files of a zero-shot task's split."""
    task = get_task(task_name)
    return split_inputs(task.dataset, task.split)


def neurons_retrieval_figures(model):
    """One grid per chosen neuron: neurons.retrieval.neurons, or its `auto` strongest."""
    n = len(NEURONS.retrieval.neurons) or NEURONS.retrieval.auto
    return [f"{R}/figures/neurons/{model}/retrieval/{i}.png" for i in range(1, n + 1)]


def neurons_is_resnet(slug):
    """Whether the tower of model ``slug`` is a CLIP ResNet, when known before loading."""
    tower = planned_tower(model_spec(slug), S.toy_models)
    return tower is not None and tower[0] == "resnet"


def neurons_text_files():
    """Text files of neurons.sparse.text_sets (file:PATH): editing one re-embeds the texts."""
    return [
        t[len("file:") :] for t in NEURONS.sparse.text_sets if t.startswith("file:")
    ]


def neurons_outputs():
    """Every output of study 003 for each model in neurons.models."""
    out = []
    toy_store = NEURONS.dataset.startswith("toy")
    for m in NEURONS_MODELS:
        out += [f"{R}/neurons/{m}/sparse.txt", f"{R}/tables/neurons/{m}/top_units.csv"]
        out += neurons_retrieval_figures(m)
        if NEURONS.effects.task:
            out.append(f"{R}/figures/neurons/{m}/effects.png")
        if NEURONS.segmentation.task and neurons_is_resnet(m):
            out.append(f"{R}/figures/neurons/{m}/segmentation.png")
        if NEURONS.shift.dataset:
            out.append(f"{R}/figures/neurons/{m}/shift.png")
        if toy_store:
            out.append(f"{R}/figures/neurons/{m}/evidence.png")
    return out
