# The toy world: generated images (HDF5) and the toy models trained on them.


rule toy_world:
    output:
        f"{R}/data/toy/{{dataset}}.h5",
    log:
        f"{R}/logs/toy_world/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/toy_world/{{dataset}}.tsv"
    wildcard_constraints:
        dataset="|".join(TOY_DATASETS),
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cfg=lambda w: toy_world_params(w.dataset),
    script:
        "../workflow_scripts/generate_toy.py"


rule train_toy_model:
    input:
        data=f"{R}/data/toy/toy.h5",
    output:
        directory(f"{R}/models/toy/{{toy_model}}"),
    log:
        f"{R}/logs/train_toy_model/{{toy_model}}.log",
    benchmark:
        f"{R}/benchmarks/train_toy_model/{{toy_model}}.tsv"
    priority: toy_train_priority
    conda:
        "../envs/cliplens.yaml"
    threads: 1  # toy models are too small to gain from a second thread: two train side by side
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=gpu_resource,
    params:
        name="{toy_model}",
        cfg=lambda w: config["toy_models"][w.toy_model],
        device=config["device"],
    script:
        "../workflow_scripts/train_toy_model.py"
