# Helpers of rules/toy.smk (functions only; the rules are there).
TOY_DATASETS = ["toy", "toy-spurious", "toy-shift", "toy-colour-ops"]
_TOY_SECTION = {
    "toy": "splits",
    "toy-spurious": "spurious",
    "toy-shift": "shift",
    "toy-colour-ops": "colour_ops",
}


def toy_world_params(dataset):
    """Only what drawing ``dataset`` depends on, so editing one section reruns one dataset."""
    cfg = S.toy.to_dict()
    out = {k: cfg[k] for k in ("seed", "image_size", "noise", "textured_background")}
    section = _TOY_SECTION[dataset]
    out[section] = cfg[section]
    return out


def toy_train_priority(wildcards):
    """Longest training first: the toy model's optimiser steps x pairs per step, in thousands.
    Among jobs that are ready, Snakemake starts higher priorities first, so the longest
    training (the toy CLIP) does not start last and stretch the run."""
    train = S.toy_models[wildcards.toy_model].train
    return int(train.steps) * int(train.batch_size) / 1000.0
