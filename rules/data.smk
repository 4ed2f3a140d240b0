# Real datasets: verified downloads, extraction, manual-dataset checks.
# Where each file comes from (URL, size, SHA-256/MD5 and their sources) and how it is laid out:
# cliplens/core/data/catalog.yaml.  Other rules depend on a dataset through dataset_inputs(name)
# (rules/common.smk).
#
#   {RES}/downloads/{file}                      one verified, resumable download per archive
#   {RES}/datasets/{dataset}/.extracted/{file}  one extraction per archive (marker written last)
#   {RES}/datasets/{dataset}/.ready             the dataset is complete (marker written last)
#   {RES}/models/laclip/{name}.ready            a hand-placed LaCLIP checkpoint loads (its SHA-256)
from cliplens.core.data.catalog import catalog_files, load_catalog
from cliplens.core.data.registry import wildcard_alternatives
from cliplens.core.models.registry import laclip_path

DATA_CATALOG = load_catalog()["datasets"]
DATA_FILES = catalog_files()
AUTO_DATASETS = [n for n, e in DATA_CATALOG.items() if not e.get("manual")]
MANUAL_DATASETS = [n for n, e in DATA_CATALOG.items() if e.get("manual")]


rule download_file:
    output:
        f"{RES}/downloads/{{file}}",
    log:
        f"{R}/logs/download_file/{{file}}.log",
    wildcard_constraints:
        file=wildcard_alternatives(DATA_FILES),
    retries: 2
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=360,
    params:
        url=lambda w: DATA_FILES[w.file]["url"],
        mirrors=lambda w: list(DATA_FILES[w.file].get("mirrors", [])),
        sha256=lambda w: DATA_FILES[w.file].get("sha256"),
        md5=lambda w: DATA_FILES[w.file].get("md5"),
        size=lambda w: DATA_FILES[w.file].get("size"),
    script:
        "../workflow_scripts/data/download_file.py"


rule extract_archive:
    input:
        f"{RES}/downloads/{{file}}",
    output:
        f"{RES}/datasets/{{dataset}}/.extracted/{{file}}",
    log:
        f"{R}/logs/extract_archive/{{dataset}}/{{file}}.log",
    wildcard_constraints:
        dataset=wildcard_alternatives(AUTO_DATASETS),
        file=wildcard_alternatives(DATA_FILES),
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=120,
    params:
        file="{file}",
        name="{dataset}",
        root=f"{RES}/datasets/{{dataset}}",
    script:
        "../workflow_scripts/data/extract_archive.py"


rule prepare_dataset:
    input:
        lambda w: [
            f"{RES}/datasets/{w.dataset}/.extracted/{f['name']}"
            for f in DATA_CATALOG[w.dataset].get("files", [])
        ],
    output:
        f"{RES}/datasets/{{dataset}}/.ready",
    log:
        f"{R}/logs/prepare_dataset/{{dataset}}.log",
    wildcard_constraints:
        dataset=wildcard_alternatives(AUTO_DATASETS),
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    params:
        name="{dataset}",
        root=f"{RES}/datasets/{{dataset}}",
    script:
        "../workflow_scripts/data/prepare_dataset.py"


# Manual datasets (licence or hosting): check the layout; fail with instructions if incomplete.
rule check_manual_dataset:
    output:
        f"{RES}/datasets/{{dataset}}/.ready",
    log:
        f"{R}/logs/check_manual_dataset/{{dataset}}.log",
    wildcard_constraints:
        dataset=wildcard_alternatives(MANUAL_DATASETS),
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        name="{dataset}",
        root=f"{RES}/datasets/{{dataset}}",
    script:
        "../workflow_scripts/data/check_manual_dataset.py"


# Checkpoints placed by hand (LaCLIP's): the job fails saying where to get the file and where to
# put it, and checks that a placed one loads; replacing the file reruns what used it.
rule check_laclip_checkpoint:
    input:
        lambda w: existing(laclip_path(RES, w.name)),
    output:
        f"{RES}/models/laclip/{{name}}.ready",
    log:
        f"{R}/logs/check_laclip_checkpoint/{{name}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        spec="laclip:{name}",
    script:
        "../workflow_scripts/data/check_laclip_checkpoint.py"
