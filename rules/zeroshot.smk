# Zero-shot classification: one JSON per (model, task) from the cached image embeddings of the
# task's dataset/split, then results/tables/zeroshot/accuracy.csv and
# results/figures/zeroshot/accuracy.png over zeroshot.models x zeroshot.tasks.


include: "helpers/zeroshot.smk"


rule zeroshot_eval:
    input:
        cache=lambda w: cache_path(
            w.model, get_task(w.task).dataset, get_task(w.task).split
        ),
        model=lambda w: model_inputs(w.model),
        data=lambda w: dataset_inputs(get_task(w.task).dataset, get_task(w.task).split),
    output:
        f"{R}/zeroshot/{{model}}/{{task}}.json",
    log:
        f"{R}/logs/zeroshot_eval/{{model}}/{{task}}.log",
    benchmark:
        f"{R}/benchmarks/zeroshot_eval/{{model}}/{{task}}.tsv"
    wildcard_constraints:
        task=r"[A-Za-z0-9_-]+",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=gpu_resource,
    params:
        spec=lambda w: model_spec(w.model),
        task="{task}",
        classnames=lambda w: zeroshot_classnames(w.task),
        templates=lambda w: zeroshot_templates(w.task),
        batch_size=S.zeroshot.batch_size,
        dtype=S.cache.dtype,
        roots=data_roots,
    script:
        "../workflow_scripts/zeroshot/zeroshot_eval.py"


rule zeroshot_table:
    input:
        zeroshot_json_paths(),
    output:
        f"{R}/tables/zeroshot/accuracy.csv",
    log:
        f"{R}/logs/zeroshot_table.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../workflow_scripts/zeroshot/zeroshot_table.py"


rule zeroshot_figure:
    input:
        f"{R}/tables/zeroshot/accuracy.csv",
    output:
        report(
            f"{R}/figures/zeroshot/accuracy.png",
            caption="../report/zeroshot/accuracy.rst",
            category="Zero-shot",
        ),
    log:
        f"{R}/logs/zeroshot_figure.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        title="Zero-shot top-1 accuracy",
    script:
        "../workflow_scripts/zeroshot/zeroshot_figure.py"
