# Helpers of rules/caches.smk (functions only; the rules are there).
def cache_path(model_slug, dataset, split):
    """The gathered embeddings cache of (model slug, dataset, split)."""
    return f"{R}/cache/{model_slug}/{dataset}/{split}/embeddings.h5"


def cache_shard_paths(wildcards):
    w = wildcards
    folder = f"{R}/cache/{w.model}/{w.dataset}/{w.split}"
    n = shard_count(S.cache.shards, w.dataset, w.split, S.cache.batch_size)
    return shard_paths(folder, "embeddings.", n)
