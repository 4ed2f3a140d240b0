# Study 002: sparse autoencoders on CLIP image embeddings (cliplens/studies/sae/, settings sae.*).
#
#   {R}/sae/{model}/{dataset}/{sae}/sae.{safetensors,json}     one SAE of sae.saes, trained on the
#       embeddings of {dataset}/sae.fit_split (checkpoints beside it: a killed job resumes)
#   {R}/sae/{model}/{dataset}/{sae}/eval/{task}.json           its metrics and CLIP vs CLIP+SAE
#       zero-shot accuracy on a task of that dataset
#   {R}/tables/sae/{model}/metrics.csv, {R}/figures/sae/{model}/metrics.png   every SAE and task
#   {R}/tables/sae/{model}/{dataset}/{sae}/features.{csv,json}, {R}/figures/sae/{model}/{dataset}/
#       {sae}/{collages,histograms}.png   per feature on the fit split: firing rate, top images,
#       purity against the toy factors; {R}/reports/sae/{model}/{dataset}/{sae}/collages/{j}.png
#       the collage of each feature described
#   {R}/tables/sae/{model}/{dataset}/{sae}/interpretations.{csv,json}   each described feature
#       in words (sae.interpret: offline baseline or an endpoint; a journal beside the SAE keeps
#       every answer) with cleaning, flags and detection AUC
#   {R}/reports/sae/index.html                             everything above on one static page


include: "helpers/sae.smk"


rule sae_train:
    input:
        cache=lambda w: cache_path(w.model, w.dataset, SAE.fit_split),
    output:
        weights=f"{R}/sae/{{model}}/{{dataset}}/{{sae}}/sae.safetensors",
        meta=f"{R}/sae/{{model}}/{{dataset}}/{{sae}}/sae.json",
    log:
        f"{R}/logs/sae_train/{{model}}/{{dataset}}/{{sae}}.log",
    benchmark:
        f"{R}/benchmarks/sae_train/{{model}}/{{dataset}}/{{sae}}.tsv"
    conda:
        "../envs/cliplens.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=gpu_resource,
    params:
        spec=lambda w: model_spec(w.model),
        sae=lambda w: SAE.saes[w.sae].params(),
        train=SAE.train.to_dict(),
    script:
        "../workflow_scripts/sae/sae_train.py"


rule sae_evaluate:
    input:
        unpack(sae_eval_inputs),
        model=lambda w: model_inputs(w.model),
    output:
        f"{R}/sae/{{model}}/{{dataset}}/{{sae}}/eval/{{task}}.json",
    log:
        f"{R}/logs/sae_evaluate/{{model}}/{{dataset}}/{{sae}}/{{task}}.log",
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
    script:
        "../workflow_scripts/sae/sae_evaluate.py"


rule sae_table:
    input:
        lambda w: sae_evaluations(w.model),
    output:
        csv=f"{R}/tables/sae/{{model}}/metrics.csv",
        png=report(
            f"{R}/figures/sae/{{model}}/metrics.png",
            category="Study 002: sparse autoencoders",
            caption="../report/sae/metrics.rst",
        ),
    log:
        f"{R}/logs/sae_table/{{model}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        names=lambda w: [p.split("/")[-3] for p in sae_evaluations(w.model)],
    script:
        "../workflow_scripts/sae/sae_table.py"


rule sae_features:
    input:
        sae=f"{R}/sae/{{model}}/{{dataset}}/{{sae}}/sae.json",
        cache=lambda w: cache_path(w.model, w.dataset, SAE.fit_split),
        data=lambda w: dataset_inputs(w.dataset, SAE.fit_split),
    output:
        csv=f"{R}/tables/sae/{{model}}/{{dataset}}/{{sae}}/features.csv",
        json=f"{R}/tables/sae/{{model}}/{{dataset}}/{{sae}}/features.json",
        collages=report(
            f"{R}/figures/sae/{{model}}/{{dataset}}/{{sae}}/collages.png",
            category="Study 002: sparse autoencoders",
            caption="../report/sae/collages.rst",
        ),
        histograms=f"{R}/figures/sae/{{model}}/{{dataset}}/{{sae}}/histograms.png",
        describe=directory(f"{R}/reports/sae/{{model}}/{{dataset}}/{{sae}}/collages"),
    log:
        f"{R}/logs/sae_features/{{model}}/{{dataset}}/{{sae}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        spec=lambda w: model_spec(w.model),
        top=SAE.features.top,
        show=SAE.features.show,
        describe=SAE.features.describe,
        roots=data_roots,
    script:
        "../workflow_scripts/sae/sae_features.py"


rule sae_interpret:
    input:
        sae=f"{R}/sae/{{model}}/{{dataset}}/{{sae}}/sae.json",
        cache=lambda w: cache_path(w.model, w.dataset, SAE.fit_split),
        features=f"{R}/tables/sae/{{model}}/{{dataset}}/{{sae}}/features.csv",
        collages=f"{R}/reports/sae/{{model}}/{{dataset}}/{{sae}}/collages",
        model=lambda w: model_inputs(w.model),
    output:
        csv=f"{R}/tables/sae/{{model}}/{{dataset}}/{{sae}}/interpretations.csv",
        json=f"{R}/tables/sae/{{model}}/{{dataset}}/{{sae}}/interpretations.json",
    log:
        f"{R}/logs/sae_interpret/{{model}}/{{dataset}}/{{sae}}.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        spec=lambda w: model_spec(w.model),
        interpret=SAE.interpret.to_dict(),
    script:
        "../workflow_scripts/sae/sae_interpret.py"


rule sae_report:
    input:
        unpack(sae_report_inputs),
    output:
        f"{R}/reports/sae/index.html",
    log:
        f"{R}/logs/sae_report.log",
    conda:
        "../envs/cliplens.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        saes=sae_report_items(),
    script:
        "../workflow_scripts/sae/sae_report.py"
