# The toy world: generated images (HDF5) and the toy models trained on them.

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


rule toy_world:
    output:
        f"{R}/data/toy/{{dataset}}.h5",
    params:
        cfg=lambda w: toy_world_params(w.dataset),
    log:
        f"{R}/logs/toy_world/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/toy_world/{{dataset}}.tsv"
    wildcard_constraints:
        dataset="|".join(TOY_DATASETS),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../workflow_scripts/generate_toy.py"


rule train_toy_model:
    input:
        data=f"{R}/data/toy/toy.h5",
    output:
        directory(f"{R}/models/toy/{{toy_model}}"),
    params:
        name="{toy_model}",
        cfg=lambda w: config["toy_models"][w.toy_model],
    log:
        f"{R}/logs/train_toy_model/{{toy_model}}.log",
    benchmark:
        f"{R}/benchmarks/train_toy_model/{{toy_model}}.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
    script:
        "../workflow_scripts/train_toy_model.py"
