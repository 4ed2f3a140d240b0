# Embedding caches: results/cache/{model}/{dataset}/{split}/embeddings.h5
#
# Extraction is scattered over cache.shards jobs, one contiguous row range each
# (cliplens.core.caches.rows.shard_bounds), and gathered into one file of HDF5 virtual datasets
# that point at the shards by relative path (move the {split}/ folder as a whole).  A killed job
# loses one shard.  Every row cache (embeddings here, token caches of study 000, decomposition
# caches of study 001) is gathered by the same script.  Model jobs claim gpu=gpu_resource
# (rules/common.smk).


include: "helpers/caches.smk"


rule cache_shard:
    input:
        model=lambda w: model_inputs(w.model),
        data=lambda w: dataset_inputs(w.dataset, w.split),
    output:
        f"{R}/cache/{{model}}/{{dataset}}/{{split}}/shards/embeddings.{{i}}-of-{{n}}.h5",
    log:
        f"{R}/logs/cache_shard/{{model}}/{{dataset}}/{{split}}/{{i}}-of-{{n}}.log",
    benchmark:
        f"{R}/benchmarks/cache_shard/{{model}}/{{dataset}}/{{split}}/{{i}}-of-{{n}}.tsv"
    wildcard_constraints:
        i=r"\d+",
        n=r"\d+",
    conda:
        "../envs/cliplens.yaml"
    threads: cache_threads
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=gpu_resource,
    params:
        spec=lambda w: model_spec(w.model),
        dataset="{dataset}",
        split="{split}",
        shard=lambda w: int(w.i),
        n_shards=lambda w: int(w.n),
        batch_size=S.cache.batch_size,
        dtype=S.cache.dtype,
        normalize=False,
        roots=data_roots,
    script:
        "../workflow_scripts/caches/cache_shard.py"


rule cache_gather:
    input:
        cache_shard_paths,
    output:
        f"{R}/cache/{{model}}/{{dataset}}/{{split}}/embeddings.h5",
    log:
        f"{R}/logs/cache_gather/{{model}}/{{dataset}}/{{split}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../workflow_scripts/caches/gather.py"
