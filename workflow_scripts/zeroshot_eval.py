"""Zero-shot accuracy of one model on one task, from the cached image embeddings."""

import torch

from cliplens.cache import open_cache
from cliplens.data.registry import get_task
from cliplens.io import write_json_atomic
from cliplens.models.registry import load_model
from cliplens.runlog import job_log
from cliplens.zeroshot import build_classifier, zeroshot_accuracy

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    task = get_task(p.task)
    expected = {"model": p.spec, "dataset": task.dataset, "split": task.split, "dtype": p.dtype}
    emb, _, prov = open_cache(snakemake.input.cache, expected)
    dataset = task.open(**p.roots)  # labels = the task's labels
    labels = dataset.labels[prov["start"] : prov["stop"]]
    classnames = list(p.classnames) if p.classnames else task.classnames_for(dataset)
    model = load_model(p.spec, **p.load)
    classifier = build_classifier(model, classnames, p.templates, p.batch_size)
    result = zeroshot_accuracy(emb, labels, classifier)
    log.info("%s on %s: top-1 %.4f, top-5 %s (n=%d, %d classes, %d templates)", p.spec, p.task,
             result["top1"], result["top5"], result["n"], result["classes"], len(p.templates))
    result.update(model=p.spec, task=p.task, dataset=task.dataset, split=task.split,
                  label_key=task.label_key, classnames=classnames, templates=list(p.templates))
    write_json_atomic(snakemake.output[0], result)
