"""The jobs of the shared rules (``rules/data.smk``, ``toy.smk``, ``caches.smk``,
``zeroshot.smk``): one ``run_*`` per rule, called by ``workflow_scripts/<rules file>/<rule>.py``
with the rule's params, inputs and outputs.  Each reads its inputs, checks them, computes with the
library and writes its outputs atomically; each is usable from a notebook as it is.

``load`` (every job that loads a model) holds :func:`~cliplens.core.models.registry.load_model`'s
keyword arguments (``toy_root``, ``device``, ``hf_home``, ``resources``: :func:`model_load`);
``roots`` the ``results`` and ``resources`` folders datasets are opened from.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger("cliplens")

#: the columns of the zero-shot table
ZEROSHOT_COLUMNS = ["model", "task", "top1", "top5", "mean_per_class", "n", "classes"]


def model_load(config: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`~cliplens.core.models.registry.load_model`'s keyword arguments from the workflow's
    ``config`` (``snakemake.config`` in a job): the toy models' folder, the ``device``, the
    Hugging Face cache (``hf_home``) and the root of hand-placed checkpoints (``resources``).
    Scripts read them from the config rather than from the rule's params, because params are
    what Snakemake reruns a job for, and where a cache lives or which device computes cannot
    change a result."""
    return {"toy_root": f"{config.get('results', 'results')}/models/toy",
            "device": config.get("device", "auto"), "hf_home": config.get("hf_home"),
            "resources": config.get("resources", "resources")}


# ---------------------------------------------------------------------------------------------
# datasets (rules/data.smk)


def run_download(*, url: str, out: str, sha256: str | None, md5: str | None, size: int | None,
                 mirrors: Sequence[str] = ()) -> Path:
    """Download one catalog file: resumable, checked against size and SHA-256/MD5, renamed
    atomically (:func:`cliplens.core.data.download.download`)."""
    from .data.download import download

    log.info("fetching %s -> %s", url, out)
    return download(url, out, sha256=sha256, md5=md5, size=size, progress=True,
                    mirrors=mirrors)


def run_extract_archive(*, archive: str, file: str, name: str, root: str, out: str) -> list[str]:
    """Verify one downloaded archive against the catalog (a copy placed by hand is checked as a
    download is; a mismatch is moved aside), extract it into its dataset folder; the marker
    ``out`` (JSON: dataset, file, top-level entries, digests seen) is written last."""
    from .data.archives import extract_verified

    info = extract_verified(file, Path(archive).parent, root, marker=out, dataset=name)
    log.info("verified (sha256 %s) and extracted %s into %s: %s", info["seen"]["sha256"],
             Path(archive).name, root, info["entries"])
    return info["entries"]


def run_finish_dataset(*, name: str, root: str, out: str) -> Path:
    """Nested archives, cleanup, layout check and the ``.ready`` marker of a downloaded dataset."""
    from .data.archives import finish_dataset

    marker = finish_dataset(name, root)
    if Path(marker) != Path(out):
        raise RuntimeError(f"{name}: the marker is {marker}, the rule expects {out}")
    log.info("dataset %s ready in %s", name, root)
    return marker


def run_check_manual(*, name: str, root: str) -> Path:
    """Check a manually placed dataset (raises the catalog's where-to-get-it instructions when it
    is incomplete), prepare it once (ImageNet's devkit) and write ``.ready``."""
    from .data.archives import check_manual, mark_manual_ready
    from .data.registry import prepare_manual

    check_manual(name, root)
    prepare_manual(name, root)
    marker = mark_manual_ready(name, root)
    log.info("manual dataset %s is in place under %s", name, root)
    return marker


def run_check_checkpoint(*, spec: str, load: Mapping[str, Any], out: str) -> dict[str, Any]:
    """Check a checkpoint placed by hand (``laclip:NAME``: ``{resources}/models/laclip/NAME.pt``,
    ``resources`` from ``load``): a missing file raises the loader's where-to-get-it and
    where-to-put-it message; a present one must load strictly into its model (on the CPU).
    Writes ``out`` (JSON: spec, file SHA-256, sizes)."""
    from .io import write_json_atomic
    from .models.registry import load_model

    model = load_model(spec, **{**load, "device": "cpu"})
    prov = model.provenance()
    result = {"spec": spec, "weights_sha256": prov.get("weights_sha256"),
              "file": prov.get("laclip_file"), "embed_dim": model.embed_dim,
              "image_size": model.image_size}
    write_json_atomic(out, result)
    log.info("%s is in place (%s, sha256 %s)", spec, result["file"], result["weights_sha256"])
    return result


# ---------------------------------------------------------------------------------------------
# the toy world (rules/toy.smk)


def run_toy_world(*, dataset: str, cfg: Mapping[str, Any], out: str) -> dict[str, int]:
    """Draw one toy dataset (all its splits) from the ``toy`` settings ``cfg`` and write it as
    HDF5 with its provenance; returns the split sizes."""
    from .data.toy import write_toy_dataset
    from .io import library_versions
    from .settings import ToySettings
    from .toy import world

    t0 = time.perf_counter()
    splits = world.generate(dataset, ToySettings.from_dict(cfg))
    sizes = {k: len(v) for k, v in splits.items()}
    log.info("drew %s: %s in %.1f s", dataset, sizes, time.perf_counter() - t0)
    write_toy_dataset(out, splits, {"dataset": dataset, "generator": dict(cfg),
                                    "versions": library_versions()})
    return sizes


def train_toy_model(name: str, cfg, train: Mapping[str, Any], val: Mapping[str, Any] | None,
                    out_dir: str | Path, progress: bool = True, device: str | None = "cpu"
                    ) -> dict[str, Any]:
    """:func:`~cliplens.core.toy.training.train_toy`, the zero-shot accuracies per factor on
    ``val`` into the metadata (``zeroshot``, :func:`~cliplens.core.text.zeroshot.toy_zeroshot`),
    then :func:`~cliplens.core.toy.training.save_toy_model` into ``out_dir``; returns the
    metadata."""
    from .text.zeroshot import toy_zeroshot
    from .toy.training import resolve_device, save_toy_model, train_toy

    toy, meta = train_toy(name, cfg, train, progress=progress, device=device)
    if val is not None:
        dev = resolve_device(device)
        meta["zeroshot"] = toy_zeroshot(toy.to(dev), val, device=dev)
        toy.to("cpu")
        log.info("%s: zero-shot on val %s", name,
                 ", ".join(f"{k} {v:.3f}" for k, v in meta["zeroshot"].items()))
    save_toy_model(toy, meta, out_dir)
    return meta


def run_train_toy_model(*, name: str, cfg: Mapping[str, Any], device: str, data: str,
                        out: str) -> dict[str, Any]:
    """Train toy model ``name`` on the toy world's train split (zero-shot scored on val) and save
    it in its library's format into the directory ``out``; returns its metadata."""
    from .data.toy import read_split
    from .settings import ToyModelSettings

    train = read_split(data, "train", keys=("images",))
    val = read_split(data, "val", keys=("images",))
    meta = train_toy_model(name, ToyModelSettings.from_dict(cfg, where=f"toy_models.{name}"),
                           train, val, out, device=device)
    log.info("%s: %d steps in %.1f s (+%.1f s preparation), final loss %.4f, zero-shot on val "
             "%s", name, meta["steps"], meta["train_seconds"], meta["prep_seconds"],
             meta["final_loss"], meta.get("zeroshot"))
    return meta


# ---------------------------------------------------------------------------------------------
# caches (rules/caches.smk)


def run_cache_shard(*, spec: str, load: Mapping[str, Any], dataset: str, split: str, shard: int,
                    n_shards: int, batch_size: int, dtype: str, normalize: bool,
                    roots: Mapping[str, str], out: str) -> dict[str, Any]:
    """Embed shard ``shard`` of ``n_shards`` (a contiguous row range cut on batch boundaries) of
    ``dataset``/``split`` with model ``spec`` into an embeddings cache."""
    from .caches.embeddings import extract_embeddings
    from .caches.rows import shard_bounds
    from .data.registry import open_dataset
    from .models.registry import load_model

    data = open_dataset(dataset, split, **roots)
    start, stop = shard_bounds(len(data), n_shards, shard, align=batch_size)
    log.info("%s on %s/%s: shard %d of %d = rows [%d, %d) of %d", spec, dataset, split, shard,
             n_shards, start, stop, len(data))
    model = load_model(spec, **load)
    return extract_embeddings(model, data, out, start=start, stop=stop, batch_size=batch_size,
                              dtype=dtype, normalize=normalize)


def run_texts(*, spec: str, load: Mapping[str, Any], sources: Sequence[str], n_words: int,
              out: str) -> int:
    """Embed every text of ``sources`` (pooled, duplicates dropped, the first source kept) with
    model ``spec`` into ``out`` (:func:`~cliplens.core.text.textsets.write_texts`); returns the
    number of texts."""
    from .models.registry import load_model
    from .text.textsets import embed_texts, pooled_text_sets, write_texts

    texts, origin = pooled_text_sets(sources, n_words)
    write_texts(out, spec, texts, origin, embed_texts(load_model(spec, **load), texts))
    log.info("%s: %d texts from %s", spec, len(texts), ", ".join(sources))
    return len(texts)


def run_gather(*, shards: Sequence[str], out: str) -> dict[str, Any]:
    """Join the shards of one row cache (embeddings, tokens, decomposition, ...) into a file of
    HDF5 virtual datasets."""
    from .caches.rows import gather_shards

    prov = gather_shards(list(shards), out)
    log.info("gathered %d shards: %d rows of %s on %s/%s", len(shards), prov["rows"],
             prov.get("model"), prov.get("dataset"), prov.get("split"))
    return prov


# ---------------------------------------------------------------------------------------------
# zero-shot (rules/zeroshot.smk)


def run_zeroshot_eval(*, spec: str, load: Mapping[str, Any], task: str,
                      classnames: Sequence[str] | None, templates: Sequence[str],
                      batch_size: int, dtype: str, roots: Mapping[str, str], cache: str,
                      out: str) -> dict[str, Any]:
    """Zero-shot accuracy of model ``spec`` on ``task`` from its cached image embeddings (the
    cache must be this model's, of the task's split, in ``dtype``); JSON result to ``out``."""
    from .caches.embeddings import open_cache
    from .data.tasks import get_task
    from .io import write_json_atomic
    from .models.registry import load_model
    from .text.zeroshot import build_classifier, zeroshot_accuracy

    t = get_task(task)
    expected = {"model": spec, "dataset": t.dataset, "split": t.split, "dtype": dtype}
    emb, _, prov = open_cache(cache, expected)
    data = t.open(**roots)  # labels = the task's labels
    labels = data.labels[prov["start"]:prov["stop"]]
    names = list(classnames) if classnames else t.classnames_for(data)
    model = load_model(spec, **load)
    result = zeroshot_accuracy(emb, labels, build_classifier(model, names, templates, batch_size))
    log.info("%s on %s: top-1 %.4f, top-5 %s (n=%d, %d classes, %d templates)", spec, task,
             result["top1"], result["top5"], result["n"], result["classes"], len(templates))
    result.update(model=spec, task=task, dataset=t.dataset, split=t.split,
                  label_key=t.label_key, classnames=names, templates=list(templates))
    write_json_atomic(out, result)
    return result


def run_zeroshot_table(*, results: Sequence[str], out: str):
    """Collect the per-(model, task) zero-shot results into one CSV table."""
    import pandas as pd

    from .io import write_table

    rows = [json.loads(Path(p).read_text()) for p in results]
    table = pd.DataFrame([{c: r.get(c) for c in ZEROSHOT_COLUMNS} for r in rows],
                         columns=ZEROSHOT_COLUMNS)
    write_table(out, table, float_format="%.6g")
    log.info("zero-shot table: %d rows\n%s", len(table), table.to_string(index=False))
    return table


def run_zeroshot_figure(*, table: str, title: str, out: str) -> None:
    """Heatmap of zero-shot top-1 accuracy, models x tasks, from the zero-shot table."""
    import pandas as pd

    from .figures import zeroshot_figure

    data = pd.read_csv(table)
    zeroshot_figure(data, out, title=title)
    log.info("wrote %s (%d models x %d tasks)", out, data["model"].nunique(),
             data["task"].nunique())

