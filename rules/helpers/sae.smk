# Helpers of rules/sae.smk (functions only; the rules are there).
SAE = S.sae
SAE_MODEL = model_slug(SAE.model)


def sae_datasets():
    """The datasets of sae.tasks, in order: one SAE of each name per dataset."""
    return list(dict.fromkeys(get_task(t).dataset for t in SAE.tasks))


def sae_dir(model, dataset, name):
    return f"{R}/sae/{model}/{dataset}/{name}"


def sae_eval_inputs(wildcards):
    """The SAE, and the embeddings cache and dataset files of the task's split."""
    task = get_task(wildcards.task)
    return {
        "sae": f"{sae_dir(wildcards.model, wildcards.dataset, wildcards.sae)}/sae.json",
        "cache": cache_path(wildcards.model, task.dataset, task.split),
        "data": split_inputs(task.dataset, task.split),
    }


def sae_evaluations(model):
    """Every (SAE, task) evaluation of ``model``: each SAE scored on each task of its dataset."""
    out = []
    for t in SAE.tasks:
        d = get_task(t).dataset
        out += [f"{sae_dir(model, d, name)}/eval/{t}.json" for name in SAE.saes]
    return out


def sae_report_items():
    """Each SAE of the report: name, model, dataset and its part 2 files."""
    out = []
    for d in sae_datasets():
        for name in SAE.saes:
            t = f"{R}/tables/sae/{SAE_MODEL}/{d}/{name}"
            out.append(
                {
                    "name": name,
                    "model": SAE.model,
                    "dataset": d,
                    "interpretations": f"{t}/interpretations.csv",
                    "summary": f"{t}/interpretations.json",
                    "collages": f"{R}/reports/sae/{SAE_MODEL}/{d}/{name}/collages",
                }
            )
    return out


def sae_report_inputs(wildcards):
    """The metrics table and every SAE's descriptions and collages."""
    items = sae_report_items()
    return {
        "metrics": [f"{R}/tables/sae/{SAE_MODEL}/metrics.csv"],
        "interpretations": [i["interpretations"] for i in items],
        "summaries": [i["summary"] for i in items],
        "collages": [i["collages"] for i in items],
    }


def sae_outputs():
    """Every output of study 002."""
    out = [
        f"{R}/tables/sae/{SAE_MODEL}/metrics.csv",
        f"{R}/figures/sae/{SAE_MODEL}/metrics.png",
        f"{R}/reports/sae/index.html",
    ]
    for d in sae_datasets():
        out += [
            f"{R}/figures/sae/{SAE_MODEL}/{d}/{name}/collages.png" for name in SAE.saes
        ]
    return out
