# The toy world: generated images (HDF5) and the toy models trained on them.
#
#   {R}/data/toy/{dataset}.h5          toy, toy-spurious, toy-shift, toy-colour-ops
#   {R}/models/toy/{toy_model}/        a toy model in its library's own format


include: "helpers/toy.smk"


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
        dataset="{dataset}",
        cfg=lambda w: toy_world_params(w.dataset),
    script:
        "../workflow_scripts/toy/toy_world.py"


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
        cfg=lambda w: S.toy_models[w.toy_model].to_dict(),
    script:
        "../workflow_scripts/toy/train_toy_model.py"
