# Helpers of rules/neurons.smk (functions only; the rules are there).
NEURONS = S.neurons
NEURONS_MODELS = [model_slug(m) for m in NEURONS.models]


def neurons_store_path(slug):
    """The gathered store of model ``slug`` over neurons.dataset/split."""
    return f"{R}/neurons/{slug}/{NEURONS.dataset}/{NEURONS.split}/store.h5"


def neurons_store_shards(wildcards):
    w = wildcards
    n = shard_count(
        NEURONS.shards or S.cache.shards,
        w.dataset,
        w.split,
        NEURONS.batch_size,
        NEURONS.images,
    )
    return shard_paths(f"{R}/neurons/{w.model}/{w.dataset}/{w.split}/store", "", n)


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
    return out
