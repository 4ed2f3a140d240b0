# Study 003: second-order effects of neurons (ViTs) and neuron-head pairs (CLIP ResNets)
# (cliplens/studies/neurons/, settings neurons.*).
#
#   {R}/neurons/{model}/{dataset}/{split}/{rows}/store.h5   per image ({rows}: "all" or that
#       many spread over the split), each unit's effect on the embedding: pair scalars
#       [N, H, C] or both neuron variants [N, neurons, D], and the embeddings (sharded like
#       every row cache: store/shards/{i}-of-{n}.h5, joined by a VDS)
#   {R}/neurons/{model}/components.h5                 per unit: mean, top-k images and norms,
#       first principal component (out of core; pairs in closed form)
#   {R}/neurons/{model}/texts.npz                     text sets and their embeddings
#   {R}/neurons/{model}/sparse.{json,txt}, {R}/tables/neurons/{model}/top_units.csv
#       each component as neurons.sparse.k texts; the strongest units with their texts
#   {R}/tables/neurons/{model}/effects.csv, {R}/figures/neurons/{model}/effects.png
#       zero-shot accuracy with the units replaced (component, n texts) or mean-ablated


include: "helpers/neurons.smk"


rule neurons_store_shard:
    input:
        model=lambda w: model_inputs(w.model),
        data=lambda w: dataset_inputs(w.dataset, w.split),
    output:
        f"{R}/neurons/{{model}}/{{dataset}}/{{split}}/{{rows}}/store/shards/{{i}}-of-{{n}}.h5",
    log:
        f"{R}/logs/neurons_store_shard/{{model}}/{{dataset}}/{{split}}/{{rows}}/{{i}}-of-{{n}}.log",
    benchmark:
        f"{R}/benchmarks/neurons_store_shard/{{model}}/{{dataset}}/{{split}}/{{rows}}/{{i}}-of-{{n}}.tsv"
    wildcard_constraints:
        i=r"\d+",
        n=r"\d+",
        rows=r"all|\d+",
    conda:
        "../envs/cliplens.yaml"
    threads: cache_threads
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=gpu_resource,
    params:
        spec=lambda w: model_spec(w.model),
        dataset="{dataset}",
        split="{split}",
        images=neurons_images,
        shard=lambda w: int(w.i),
        n_shards=lambda w: int(w.n),
        layer=NEURONS.layer,
        batch_size=NEURONS.batch_size,
        dtype=NEURONS.dtype,
        roots=data_roots,
    script:
        "../workflow_scripts/neurons/neurons_store_shard.py"


rule neurons_store_gather:
    input:
        neurons_store_shards,
    output:
        f"{R}/neurons/{{model}}/{{dataset}}/{{split}}/{{rows}}/store.h5",
    log:
        f"{R}/logs/neurons_store_gather/{{model}}/{{dataset}}/{{split}}/{{rows}}.log",
    wildcard_constraints:
        rows=r"all|\d+",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../workflow_scripts/caches/gather.py"


rule neurons_components:
    input:
        store=lambda w: neurons_store_path(w.model),
        model=lambda w: model_inputs(w.model),
    output:
        f"{R}/neurons/{{model}}/components.h5",
    log:
        f"{R}/logs/neurons_components/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/neurons_components/{{model}}.tsv"
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=240,
    params:
        spec=lambda w: model_spec(w.model),
        cfg=NEURONS.components.to_dict(),
    script:
        "../workflow_scripts/neurons/neurons_components.py"


rule neurons_texts:
    input:
        model=lambda w: model_inputs(w.model),
        files=neurons_text_files(),
    output:
        f"{R}/neurons/{{model}}/texts.npz",
    log:
        f"{R}/logs/neurons_texts/{{model}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: cache_threads
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=gpu_resource,
    params:
        spec=lambda w: model_spec(w.model),
        sources=list(NEURONS.sparse.text_sets),
        n_words=NEURONS.sparse.n_words,
    script:
        "../workflow_scripts/caches/texts.py"


rule neurons_sparse:
    input:
        components=f"{R}/neurons/{{model}}/components.h5",
        texts=f"{R}/neurons/{{model}}/texts.npz",
    output:
        json=f"{R}/neurons/{{model}}/sparse.json",
        txt=f"{R}/neurons/{{model}}/sparse.txt",
        csv=f"{R}/tables/neurons/{{model}}/top_units.csv",
    log:
        f"{R}/logs/neurons_sparse/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/neurons_sparse/{{model}}.tsv"
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        spec=lambda w: model_spec(w.model),
        cfg=NEURONS.sparse.to_dict(),
        table=NEURONS.table.to_dict(),
    script:
        "../workflow_scripts/neurons/neurons_sparse.py"


rule neurons_effects:
    input:
        unpack(neurons_effects_inputs),
        components=f"{R}/neurons/{{model}}/components.h5",
        texts=f"{R}/neurons/{{model}}/texts.npz",
        model=lambda w: model_inputs(w.model),
    output:
        csv=f"{R}/tables/neurons/{{model}}/effects.csv",
        png=report(
            f"{R}/figures/neurons/{{model}}/effects.png",
            category="Study 003: neurons and pairs",
            caption="../report/neurons/effects.rst",
        ),
    log:
        f"{R}/logs/neurons_effects/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/neurons_effects/{{model}}.tsv"
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=240,
    params:
        spec=lambda w: model_spec(w.model),
        cfg=NEURONS.effects.to_dict(),
        sparse=NEURONS.sparse.to_dict(),
        roots=data_roots,
    script:
        "../workflow_scripts/neurons/neurons_effects.py"


rule neurons_retrieval:
    input:
        store=lambda w: neurons_store_path(w.model),
        components=f"{R}/neurons/{{model}}/components.h5",
        sparse=f"{R}/neurons/{{model}}/sparse.json",
        model=lambda w: model_inputs(w.model),
        data=lambda w: dataset_inputs(NEURONS.dataset, NEURONS.split),
    output:
        csv=f"{R}/tables/neurons/{{model}}/retrieval.csv",
        pngs=report(
            neurons_retrieval_figures("{model}"),
            category="Study 003: neurons and pairs",
            caption="../report/neurons/retrieval.rst",
        ),
    log:
        f"{R}/logs/neurons_retrieval/{{model}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        spec=lambda w: model_spec(w.model),
        cfg=NEURONS.retrieval.to_dict(),
        roots=data_roots,
    script:
        "../workflow_scripts/neurons/neurons_retrieval.py"


rule neurons_segmentation:
    input:
        components=f"{R}/neurons/{{model}}/components.h5",
        model=lambda w: model_inputs(w.model),
        data=lambda w: neurons_task_inputs(NEURONS.segmentation.task),
    output:
        csv=f"{R}/tables/neurons/{{model}}/segmentation.csv",
        png=report(
            f"{R}/figures/neurons/{{model}}/segmentation.png",
            category="Study 003: neurons and pairs",
            caption="../report/neurons/segmentation.rst",
        ),
    log:
        f"{R}/logs/neurons_segmentation/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/neurons_segmentation/{{model}}.tsv"
    conda:
        "../envs/cliplens.yaml"
    threads: cache_threads
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=gpu_resource,
    params:
        spec=lambda w: model_spec(w.model),
        cfg=NEURONS.segmentation.to_dict(),
        roots=data_roots,
    script:
        "../workflow_scripts/neurons/neurons_segmentation.py"


rule neurons_shift:
    input:
        store=lambda w: neurons_store_path(
            w.model, NEURONS.shift.dataset, NEURONS.shift.split, NEURONS.shift.images
        ),
        components=f"{R}/neurons/{{model}}/components.h5",
        sparse=f"{R}/neurons/{{model}}/sparse.json",
        model=lambda w: model_inputs(w.model),
        data=lambda w: dataset_inputs(NEURONS.shift.dataset, NEURONS.shift.split),
    output:
        csv=f"{R}/tables/neurons/{{model}}/shift.csv",
        png=report(
            f"{R}/figures/neurons/{{model}}/shift.png",
            category="Study 003: neurons and pairs",
            caption="../report/neurons/shift.rst",
        ),
    log:
        f"{R}/logs/neurons_shift/{{model}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        spec=lambda w: model_spec(w.model),
        cfg=NEURONS.shift.to_dict(),
        years=list(S.toy.shift.years),
        roots=data_roots,
    script:
        "../workflow_scripts/neurons/neurons_shift.py"


rule neurons_evidence:
    input:
        store=lambda w: neurons_store_path(w.model),
        components=f"{R}/neurons/{{model}}/components.h5",
        sparse=f"{R}/neurons/{{model}}/sparse.json",
        model=lambda w: model_inputs(w.model),
        data=lambda w: dataset_inputs(NEURONS.dataset, NEURONS.split),
    output:
        csv=f"{R}/tables/neurons/{{model}}/evidence.csv",
        json=f"{R}/tables/neurons/{{model}}/evidence.json",
        png=report(
            f"{R}/figures/neurons/{{model}}/evidence.png",
            category="Study 003: neurons and pairs",
            caption="../report/neurons/evidence.rst",
        ),
    log:
        f"{R}/logs/neurons_evidence/{{model}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        spec=lambda w: model_spec(w.model),
        cfg=NEURONS.evidence.to_dict(),
        roots=data_roots,
    script:
        "../workflow_scripts/neurons/neurons_evidence.py"
