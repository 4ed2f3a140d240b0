# Study 001: per-head direct effects explained with text (cliplens/studies/heads/, settings
# heads.*).
#
#   {R}/cache/{model}/{dataset}/{split}/decomposition.h5        exact decomposition of every
#       image embedding into embedding term, heads, MLPs and the rest (sharded like every row
#       cache: decomposition/shards/{i}-of-{n}.h5, joined by a VDS)
#   {R}/heads/{model}/texts.npz                                 text sets and their embeddings
#   {R}/heads/{model}/textspan.{json,txt,npz}, {R}/tables/heads/{model}/textspan.csv
#   {R}/tables/heads/{model}/replacement.csv      accuracy with heads replaced by their texts
#   {R}/tables/heads/{model}/ablation.csv, {R}/figures/heads/{model}/ablation.png
#   {R}/tables/heads/{model}/factors.csv, {R}/heads/{model}/factors.json,
#       {R}/figures/heads/{model}/factors.png          toy ground truth: TextSpan vs probe
#   {R}/tables/heads/{model}/segmentation.csv, {R}/figures/heads/{model}/spatial_maps.{png,npz}
#   {R}/tables/heads/{model}/neighbours.csv, {R}/figures/heads/{model}/neighbours.png
#   {R}/tables/heads/{model}/spurious.csv, {R}/heads/{model}/spurious.json,
#       {R}/figures/heads/{model}/spurious.png     worst-group accuracy, spurious heads ablated


include: "helpers/heads.smk"


rule heads_decompose_shard:
    input:
        model=lambda w: model_inputs(w.model),
        data=lambda w: dataset_inputs(w.dataset, w.split),
    output:
        f"{R}/cache/{{model}}/{{dataset}}/{{split}}/decomposition/shards/{{i}}-of-{{n}}.h5",
    log:
        f"{R}/logs/heads_decompose_shard/{{model}}/{{dataset}}/{{split}}/{{i}}-of-{{n}}.log",
    benchmark:
        f"{R}/benchmarks/heads_decompose_shard/{{model}}/{{dataset}}/{{split}}/{{i}}-of-{{n}}.tsv"
    wildcard_constraints:
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
        shard=lambda w: int(w.i),
        n_shards=lambda w: int(w.n),
        layers=plain(HEADS.layers),
        batch_size=HEADS.batch_size,
        dtype=HEADS.dtype,
        roots=data_roots,
    script:
        "../workflow_scripts/heads/heads_decompose_shard.py"


rule heads_decompose_gather:
    input:
        decomposition_shard_paths,
    output:
        f"{R}/cache/{{model}}/{{dataset}}/{{split}}/decomposition.h5",
    log:
        f"{R}/logs/heads_decompose_gather/{{model}}/{{dataset}}/{{split}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../workflow_scripts/caches/gather.py"


rule heads_texts:
    input:
        model=lambda w: model_inputs(w.model),
        files=heads_text_files(),
    output:
        f"{R}/heads/{{model}}/texts.npz",
    log:
        f"{R}/logs/heads_texts/{{model}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: cache_threads
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=gpu_resource,
    params:
        spec=lambda w: model_spec(w.model),
        sources=list(HEADS.textspan.text_sets),
        n_words=HEADS.textspan.n_words,
    script:
        "../workflow_scripts/caches/texts.py"


rule heads_textspan:
    input:
        fit=heads_fit_cache,
        texts=f"{R}/heads/{{model}}/texts.npz",
    output:
        json=f"{R}/heads/{{model}}/textspan.json",
        txt=f"{R}/heads/{{model}}/textspan.txt",
        csv=f"{R}/tables/heads/{{model}}/textspan.csv",
        npz=f"{R}/heads/{{model}}/textspan.npz",
    log:
        f"{R}/logs/heads_textspan/{{model}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        spec=lambda w: model_spec(w.model),
        cfg=HEADS.textspan.to_dict(),
    script:
        "../workflow_scripts/heads/heads_textspan.py"


rule heads_replacement:
    input:
        unpack(heads_task_caches),
        textspan=f"{R}/heads/{{model}}/textspan.npz",
        model=lambda w: model_inputs(w.model),
        data=heads_task_data,
    output:
        f"{R}/tables/heads/{{model}}/replacement.csv",
    log:
        f"{R}/logs/heads_replacement/{{model}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=gpu_resource,
    params:
        spec=lambda w: model_spec(w.model),
        tasks=list(HEADS.tasks),
        cfg=HEADS.textspan.to_dict(),
        roots=data_roots,
    script:
        "../workflow_scripts/heads/heads_replacement.py"


rule heads_ablation:
    input:
        unpack(heads_task_caches),
        model=lambda w: model_inputs(w.model),
        data=heads_task_data,
    output:
        csv=f"{R}/tables/heads/{{model}}/ablation.csv",
        png=report(
            f"{R}/figures/heads/{{model}}/ablation.png",
            caption="../report/heads/ablation.rst",
            category="Study 001: heads",
        ),
    log:
        f"{R}/logs/heads_ablation/{{model}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=gpu_resource,
    params:
        spec=lambda w: model_spec(w.model),
        tasks=list(HEADS.tasks),
        roots=data_roots,
    script:
        "../workflow_scripts/heads/heads_ablation.py"


rule heads_factors:
    input:
        fit=heads_fit_cache,
        test=lambda w: decomposition_path(
            w.model, HEADS.fit.dataset, HEADS.factors.split
        ),
        textspan=f"{R}/heads/{{model}}/textspan.json",
        data=lambda w: split_inputs(
            HEADS.fit.dataset, HEADS.fit.split, HEADS.factors.split
        ),
    output:
        csv=f"{R}/tables/heads/{{model}}/factors.csv",
        json=f"{R}/heads/{{model}}/factors.json",
        png=report(
            f"{R}/figures/heads/{{model}}/factors.png",
            caption="../report/heads/factors.rst",
            category="Study 001: heads",
        ),
    log:
        f"{R}/logs/heads_factors/{{model}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        spec=lambda w: model_spec(w.model),
        top=HEADS.factors.top,
        roots=data_roots,
    script:
        "../workflow_scripts/heads/heads_factors.py"


rule heads_segmentation:
    input:
        model=lambda w: model_inputs(w.model),
        texts=f"{R}/heads/{{model}}/texts.npz",
        textspan=f"{R}/heads/{{model}}/textspan.json",
        data=lambda w: split_inputs(
            HEADS.segmentation.dataset, HEADS.segmentation.split
        )
        + split_inputs(
            get_task(HEADS.segmentation.task).dataset,
            get_task(HEADS.segmentation.task).split,
        ),
    output:
        csv=f"{R}/tables/heads/{{model}}/segmentation.csv",
        png=report(
            f"{R}/figures/heads/{{model}}/spatial_maps.png",
            caption="../report/heads/spatial_maps.rst",
            category="Study 001: heads",
        ),
        maps=f"{R}/figures/heads/{{model}}/spatial_maps.npz",
    log:
        f"{R}/logs/heads_segmentation/{{model}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: cache_threads
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=gpu_resource,
    params:
        spec=lambda w: model_spec(w.model),
        cfg=HEADS.segmentation.to_dict(),
        roots=data_roots,
        maps_layers=maps_layers,
    script:
        "../workflow_scripts/heads/heads_segmentation.py"


rule heads_neighbours:
    input:
        fit=heads_fit_cache,
        textspan=f"{R}/heads/{{model}}/textspan.json",
        data=lambda w: split_inputs(HEADS.fit.dataset, HEADS.fit.split),
    output:
        png=report(
            f"{R}/figures/heads/{{model}}/neighbours.png",
            caption="../report/heads/neighbours.rst",
            category="Study 001: heads",
        ),
        csv=f"{R}/tables/heads/{{model}}/neighbours.csv",
    log:
        f"{R}/logs/heads_neighbours/{{model}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        spec=lambda w: model_spec(w.model),
        cfg=HEADS.neighbours.to_dict(),
        roots=data_roots,
    script:
        "../workflow_scripts/heads/heads_neighbours.py"


rule heads_spurious:
    input:
        unpack(heads_spurious_caches),
        model=lambda w: model_inputs(w.model),
        data=lambda w: split_inputs(
            get_task(HEADS.spurious.task).dataset,
            HEADS.spurious.fit_split,
            get_task(HEADS.spurious.task).split,
        ),
    output:
        csv=f"{R}/tables/heads/{{model}}/spurious.csv",
        json=f"{R}/heads/{{model}}/spurious.json",
        png=report(
            f"{R}/figures/heads/{{model}}/spurious.png",
            caption="../report/heads/spurious.rst",
            category="Study 001: heads",
        ),
    log:
        f"{R}/logs/heads_spurious/{{model}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=gpu_resource,
    params:
        spec=lambda w: model_spec(w.model),
        task=HEADS.spurious.task,
        cfg=HEADS.spurious.to_dict(),
        roots=data_roots,
    script:
        "../workflow_scripts/heads/heads_spurious.py"
