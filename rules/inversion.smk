# Study 000: image reconstruction from patch tokens (SigLIP vs SigLIP2) and colour operators
# (cliplens/studies/inversion/, settings inversion.*).
#
#   {R}/cache/{model}/{dataset}/{split}/tokens/{key}.layer{layer}.{rows}.h5   token caches
#       (sharded like every row cache: tokens/shards/...{i}-of-{n}.h5, joined by a VDS);
#       key = image view (images, images_rb_swap, images_b_suppressed, images_gray),
#       rows = all | N (the first N images of the split)
#   {R}/inversion/{model}/reconstructor.{safetensors,json}    one reconstructor per extractor
#   {R}/inversion/{model}/checkpoints/                        resumable checkpoints, samples/*.png
#   {R}/inversion/{model}/heldout.h5                          reconstructions of held-out images
#   {R}/inversion/scores/{scorer}.csv                         per-image similarities per scorer
#   {R}/tables/inversion/similarity{,_per_image}.csv, v1_vs_v2.csv, operators.csv
#   {R}/figures/v1_vs_v2.png (where users ask for it), {R}/figures/inversion/reconstructions.png
#       (+ .npz, the images drawn), rb_swap.png, b_suppression.png, colorization.png
#   {R}/inversion/{model}/operators.npz                        fitted operators and examples


include: "helpers/inversion.smk"


rule inversion_token_shard:
    input:
        model=lambda w: model_inputs(w.model),
        data=lambda w: dataset_inputs(w.dataset, w.split),
    output:
        f"{R}/cache/{{model}}/{{dataset}}/{{split}}/tokens/shards/{{key}}.layer{{layer}}.{{rows}}.{{i}}-of-{{n}}.h5",
    log:
        f"{R}/logs/inversion_token_shard/{{model}}/{{dataset}}/{{split}}/{{key}}.layer{{layer}}.{{rows}}.{{i}}-of-{{n}}.log",
    benchmark:
        f"{R}/benchmarks/inversion_token_shard/{{model}}/{{dataset}}/{{split}}/{{key}}.layer{{layer}}.{{rows}}.{{i}}-of-{{n}}.tsv"
    wildcard_constraints:
        key="|".join(VIEW_KEYS),
        layer=r"-?\d+",
        rows=r"all|\d+",
        i=r"\d+",
        n=r"\d+",
    conda:
        "../envs/cliplens.yaml"
    threads: cache_threads
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=gpu_resource,
    params:
        spec=lambda w: model_spec(w.model),
        dataset="{dataset}",
        split="{split}",
        key="{key}",
        layer=lambda w: int(w.layer),
        rows="{rows}",
        shard=lambda w: int(w.i),
        n_shards=lambda w: int(w.n),
        batch_size=S.cache.batch_size,
        dtype=INV.token_dtype,
        blue_factor=inv_blue_factor,
        roots=data_roots,
    script:
        "../workflow_scripts/inversion/inversion_token_shard.py"


rule inversion_token_gather:
    input:
        token_shard_paths,
    output:
        f"{R}/cache/{{model}}/{{dataset}}/{{split}}/tokens/{{key}}.layer{{layer}}.{{rows}}.h5",
    log:
        f"{R}/logs/inversion_token_gather/{{model}}/{{dataset}}/{{split}}/{{key}}.layer{{layer}}.{{rows}}.log",
    wildcard_constraints:
        key="|".join(VIEW_KEYS),
        layer=r"-?\d+",
        rows=r"all|\d+",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../workflow_scripts/caches/gather.py"


rule inversion_train:
    input:
        tokens=inv_train_tokens,
        model=lambda w: model_inputs(w.model),
        data=split_inputs(INV.dataset, INV.train_split, INV.eval_split),
    output:
        weights=f"{R}/inversion/{{model}}/reconstructor.safetensors",
        meta=f"{R}/inversion/{{model}}/reconstructor.json",
    log:
        f"{R}/logs/inversion_train/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/inversion_train/{{model}}.tsv"
    conda:
        "../envs/cliplens.yaml"
    threads: inv_train_threads
    resources:
        mem_mb=8000,
        runtime=1440,
        gpu=gpu_resource,
    params:
        spec=lambda w: model_spec(w.model),
        dataset=INV.dataset,
        train_split=INV.train_split,
        eval_split=INV.eval_split,
        train_images=INV.train_images,
        train_tokens=INV.train_tokens,
        layer=INV.layer,
        reconstructor=INV.reconstructor.to_dict(),
        train=inv_train_params(),
        roots=data_roots,
    script:
        "../workflow_scripts/inversion/inversion_train.py"


rule inversion_reconstruct:
    input:
        weights=f"{R}/inversion/{{model}}/reconstructor.safetensors",
        meta=f"{R}/inversion/{{model}}/reconstructor.json",
        model=lambda w: model_inputs(w.model),
        data=split_inputs(INV.dataset, INV.eval_split),
    output:
        f"{R}/inversion/{{model}}/heldout.h5",
    log:
        f"{R}/logs/inversion_reconstruct/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/inversion_reconstruct/{{model}}.tsv"
    conda:
        "../envs/cliplens.yaml"
    threads: cache_threads
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=gpu_resource,
    params:
        spec=lambda w: model_spec(w.model),
        dataset=INV.dataset,
        split=INV.eval_split,
        n_images=INV.similarity.n_images,
        layer=INV.layer,
        group=lambda w: inv_group(model_spec(w.model)),
        batch_size=INV.similarity.batch_size,
        roots=data_roots,
    script:
        "../workflow_scripts/inversion/inversion_reconstruct.py"


rule inversion_score:
    input:
        heldout=inv_heldout(),
        model=lambda w: model_inputs(w.scorer),
        data=split_inputs(INV.dataset, INV.eval_split),
    output:
        f"{R}/inversion/scores/{{scorer}}.csv",
    log:
        f"{R}/logs/inversion_score/{{scorer}}.log",
    benchmark:
        f"{R}/benchmarks/inversion_score/{{scorer}}.tsv"
    wildcard_constraints:
        scorer=r"[A-Za-z0-9._@+-]+",
    conda:
        "../envs/cliplens.yaml"
    threads: inv_scorer_threads
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=gpu_resource,
    params:
        scorer=lambda w: model_spec(w.scorer),
        variants=list(INV.similarity.variants),
        batch_size=INV.similarity.batch_size,
        roots=data_roots,
    script:
        "../workflow_scripts/inversion/inversion_score.py"


rule inversion_similarity_table:
    input:
        [f"{R}/inversion/scores/{model_slug(s)}.csv" for s in INV.similarity.scorers],
    output:
        summary=f"{R}/tables/inversion/similarity.csv",
        per_image=f"{R}/tables/inversion/similarity_per_image.csv",
        diff=f"{R}/tables/inversion/v1_vs_v2.csv",
    log:
        f"{R}/logs/inversion_similarity_table/log.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        extractors=list(INV.extractors),
    script:
        "../workflow_scripts/inversion/inversion_similarity_table.py"


rule inversion_v1_vs_v2_figure:
    input:
        f"{R}/tables/inversion/similarity.csv",
    output:
        report(
            f"{R}/figures/v1_vs_v2.png",
            caption="../report/inversion/v1_vs_v2.rst",
            category="Study 000: inversion",
        ),
    log:
        f"{R}/logs/inversion_v1_vs_v2_figure/log.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        layer=INV.layer,
        dataset=INV.dataset,
        split=INV.eval_split,
    script:
        "../workflow_scripts/inversion/inversion_v1_vs_v2_figure.py"


rule inversion_reconstructions_figure:
    input:
        heldout=inv_heldout(),
        data=split_inputs(INV.dataset, INV.eval_split),
    output:
        png=report(
            f"{R}/figures/inversion/reconstructions.png",
            caption="../report/inversion/reconstructions.rst",
            category="Study 000: inversion",
        ),
        arrays=f"{R}/figures/inversion/reconstructions.npz",
    log:
        f"{R}/logs/inversion_reconstructions_figure/log.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        n_images=INV.figure.n_images,
        roots=data_roots,
    script:
        "../workflow_scripts/inversion/inversion_reconstructions_figure.py"


rule inversion_operators:
    input:
        train=list(inv_op_caches(INV_OPS.train_split, INV_OPS.train_images).values()),
        test=list(inv_op_caches(INV_OPS.test_split, INV_OPS.test_images).values()),
        weights=f"{R}/inversion/{INV_OP_SLUG}/reconstructor.safetensors",
        meta=f"{R}/inversion/{INV_OP_SLUG}/reconstructor.json",
        model=model_inputs(INV_OP_SLUG),
        data=split_inputs(INV_OPS.dataset, INV_OPS.test_split),
    output:
        arrays=f"{R}/inversion/{INV_OP_SLUG}/operators.npz",
        table=f"{R}/tables/inversion/operators.csv",
    log:
        f"{R}/logs/inversion_operators/log.log",
    benchmark:
        f"{R}/benchmarks/inversion_operators/log.tsv"
    conda:
        "../envs/cliplens.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=gpu_resource,
    params:
        spec=INV_OPS.model,
        train_caches=inv_op_caches(INV_OPS.train_split, INV_OPS.train_images),
        test_caches=inv_op_caches(INV_OPS.test_split, INV_OPS.test_images),
        dataset=INV_OPS.dataset,
        test_split=INV_OPS.test_split,
        test_images=INV_OPS.test_images,
        blue_factor=INV_OPS.blue_factor,
        tasks={k: list(v) for k, v in INV_OPS.tasks.items()},
        ridge=INV_OPS.ridge,
        n_examples=INV_OPS.n_examples,
        layer=INV.layer,
        roots=data_roots,
    script:
        "../workflow_scripts/inversion/inversion_operators.py"


rule inversion_operator_figures:
    input:
        arrays=f"{R}/inversion/{INV_OP_SLUG}/operators.npz",
        table=f"{R}/tables/inversion/operators.csv",
    output:
        [
            report(
                f"{R}/figures/inversion/{t}.png",
                caption="../report/inversion/operators.rst",
                category="Study 000: inversion",
                labels={"figure": t},
            )
            for t in INV_OPS.tasks
        ],
    log:
        f"{R}/logs/inversion_operator_figures/log.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        tasks=list(INV_OPS.tasks),
        model=INV_OPS.model,
    script:
        "../workflow_scripts/inversion/inversion_operator_figures.py"
