# Study 004: feature purity of projection layers (cliplens/studies/purity/, settings purity.*).
#
#   {R}/purity/{model}/weights.{json,npz}     purity of the image and text projections' weights;
#       each embedding dimension's summed |cos| to the others in each
#   {R}/purity/{model}/eval/{task}.csv        zero-shot accuracy and silhouette, whole and with
#       the k purest, least pure or random dimensions kept
#   {R}/tables/purity/{compare,pruning}.csv, {R}/figures/purity/{compare,pruning}.png


include: "helpers/purity.smk"


rule purity_weights:
    input:
        model=lambda w: model_inputs(w.model),
    output:
        json=f"{R}/purity/{{model}}/weights.json",
        npz=f"{R}/purity/{{model}}/weights.npz",
    log:
        f"{R}/logs/purity_weights/{{model}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        spec=lambda w: model_spec(w.model),
        include_diagonal=PU.include_diagonal,
    script:
        "../workflow_scripts/purity/purity_weights.py"


rule purity_eval:
    input:
        unpack(purity_eval_inputs),
        model=lambda w: model_inputs(w.model),
    output:
        f"{R}/purity/{{model}}/eval/{{task}}.csv",
    log:
        f"{R}/logs/purity_eval/{{model}}/{{task}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        spec=lambda w: model_spec(w.model),
        task="{task}",
        roots=data_roots,
        keep=list(PU.pruning.keep),
        seeds=PU.pruning.seeds,
        silhouette_sample=PU.pruning.silhouette_sample,
    script:
        "../workflow_scripts/purity/purity_eval.py"


rule purity_table:
    input:
        weights=expand(f"{R}/purity/{{model}}/weights.json", model=PU_MODELS),
        evals=expand(
            f"{R}/purity/{{model}}/eval/{{task}}.csv", model=PU_MODELS, task=PU.tasks
        ),
    output:
        compare=f"{R}/tables/purity/compare.csv",
        pruning=f"{R}/tables/purity/pruning.csv",
        compare_png=report(
            f"{R}/figures/purity/compare.png",
            category="Study 004: feature purity",
            caption="../report/purity/compare.rst",
        ),
        pruning_png=report(
            f"{R}/figures/purity/pruning.png",
            category="Study 004: feature purity",
            caption="../report/purity/pruning.rst",
        ),
    log:
        f"{R}/logs/purity_table.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        models=PU.models,
        pairs=[list(p) for p in PU.pairs],
    script:
        "../workflow_scripts/purity/purity_table.py"
