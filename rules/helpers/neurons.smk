# Helpers of rules/neurons.smk (functions only; the rules are there).
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


def neurons_text_files():
    """Text files of neurons.sparse.text_sets (file:PATH): editing one re-embeds the texts."""
    return [
        t[len("file:") :] for t in NEURONS.sparse.text_sets if t.startswith("file:")
    ]


def neurons_outputs():
    """Every output of study 003 for each model in neurons.models."""
    out = []
    for m in NEURONS_MODELS:
        out += [f"{R}/neurons/{m}/sparse.txt", f"{R}/tables/neurons/{m}/top_units.csv"]
        if NEURONS.effects.task:
            out.append(f"{R}/figures/neurons/{m}/effects.png")
    return out
