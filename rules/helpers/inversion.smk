# Helpers of rules/inversion.smk (functions only; the rules are there).
from cliplens.studies.inversion.naming import OPERATOR_TASKS, VIEW_KEYS, extractor_group

INV = S.inversion
INV_OPS = INV.operators
INV_OP_SLUG = model_slug(INV_OPS.model)


def inv_group(spec):
    """Label of extractor ``spec`` in v1_vs_v2.png (inversion.groups, else by name)."""
    p = parse_model_spec(spec)
    family = None
    if p.scheme == "toy" and p.name in S.toy_models:
        family = S.toy_models[p.name].family
    return extractor_group(spec, family, INV.groups)


def token_cache_path(slug, dataset, split, key="images", rows=None):
    """The gathered token cache of one image view of (model slug, dataset, split), first
    ``rows`` images (None = all), at inversion.layer."""
    rows = "all" if rows is None else int(rows)
    return f"{R}/cache/{slug}/{dataset}/{split}/tokens/{key}.layer{INV.layer}.{rows}.h5"


def token_shard_paths(wildcards):
    w = wildcards
    folder = f"{R}/cache/{w.model}/{w.dataset}/{w.split}/tokens"
    rows = None if w.rows == "all" else int(w.rows)
    n = shard_count(
        INV.token_shards or S.cache.shards, w.dataset, w.split, S.cache.batch_size, rows
    )
    return shard_paths(folder, f"{w.key}.layer{w.layer}.{w.rows}.", n)


def inv_train_tokens(wildcards):
    """The training token cache of a reconstructor, or nothing when tokens are computed online."""
    if INV.train_tokens != "cache":
        return []
    return token_cache_path(
        wildcards.model, INV.dataset, INV.train_split, rows=INV.train_images
    )


def inv_heldout():
    return [f"{R}/inversion/{model_slug(s)}/heldout.h5" for s in INV.extractors]


def inv_train_threads(wildcards):
    """Torch threads of a reconstructor's training: 1 beside a toy extractor (several train side
    by side), inversion.train.threads beside a real one."""
    return 1 if model_spec(wildcards.model).startswith("toy:") else INV.train.threads


def inv_train_params():
    """inversion.train without `threads` (a job's threads come from the threads directive;
    changing them must not retrain)."""
    return {k: v for k, v in INV.train.to_dict().items() if k != "threads"}


def inv_scorer_threads(wildcards):
    return model_threads(wildcards.scorer)


def inv_blue_factor(wildcards):
    """Blue multiplier of an on-the-fly blue suppression; only that view depends on it."""
    return INV_OPS.blue_factor if wildcards.key == "images_b_suppressed" else 0.0


def inv_op_caches(split, rows):
    """View key -> token cache of the operator extractor that the configured tasks need."""
    views = []
    for task in INV_OPS.tasks:
        views += OPERATOR_TASKS[task][:2]
    return {
        k: token_cache_path(INV_OP_SLUG, INV_OPS.dataset, split, k, rows)
        for k in dict.fromkeys(views)
    }


def inversion_outputs():
    """Every table and figure of study 000."""
    return [
        f"{R}/figures/v1_vs_v2.png",
        f"{R}/figures/inversion/reconstructions.png",
        *[f"{R}/figures/inversion/{task}.png" for task in INV_OPS.tasks],
    ]
