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


rule purity_features:
    input:
        unpack(purity_features_inputs),
        model=lambda w: model_inputs(w.model),
    output:
        f"{R}/purity/{{model}}/misalign/features.npz",
    log:
        f"{R}/logs/purity_features/{{model}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=gpu_resource,
    params:
        spec=lambda w: model_spec(w.model),
        dataset=MIS.dataset,
        split=MIS.split,
        captions=MIS.captions,
        images=MIS.images,
        tasks=list(PU.tasks),
        roots=data_roots,
    script:
        "../workflow_scripts/purity/purity_features.py"


rule purity_finetune:
    input:
        features=f"{R}/purity/{{model}}/misalign/features.npz",
        model=lambda w: model_inputs(w.model),
        data=lambda w: purity_features_inputs(w)["data"],
    output:
        f"{R}/purity/{{model}}/misalign/cs{{cs}}-seed{{seed}}.json",
    log:
        f"{R}/logs/purity_finetune/{{model}}/cs{{cs}}-seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/purity_finetune/{{model}}/cs{{cs}}-seed{{seed}}.tsv"
    wildcard_constraints:
        cs=r"[0-9.]+",
        seed=r"\d+",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        spec=lambda w: model_spec(w.model),
        fraction=lambda w: float(w.cs),
        seed=lambda w: int(w.seed),
        init=MIS.init,
        neighbours=MIS.neighbours.applied(),
        train=MIS.train.to_dict(),
        tasks=list(PU.tasks),
        roots=data_roots,
        include_diagonal=PU.include_diagonal,
    script:
        "../workflow_scripts/purity/purity_finetune.py"


rule purity_misalign_table:
    input:
        [
            f"{R}/purity/{m}/misalign/cs{cs}-seed{seed}.json"
            for m, cs, seed in misalign_runs()
        ],
    output:
        csv=f"{R}/tables/purity/misalign.csv",
        png=report(
            f"{R}/figures/purity/misalign.png",
            category="Study 004: feature purity",
            caption="../report/purity/misalign.rst",
        ),
    log:
        f"{R}/logs/purity_misalign_table.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/purity/purity_misalign_table.py"
