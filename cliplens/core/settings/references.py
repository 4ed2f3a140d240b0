"""What a config refers to, checked while the workflow plans, before any job runs.

The schema checks each value on its own; :func:`check_references` checks what the values name
against what exists: every model spec (a toy model defined under ``toy_models``, an open_clip
architecture open_clip ships a config for, a local directory), every zero-shot task, every
dataset and split (toy splits from the toy world's settings, real ones from
:data:`cliplens.core.data.readers.SPLITS`), lists that name one thing twice, layer and head
indices against the towers whose layout is known before loading
(:func:`cliplens.core.models.layout.planned_layout`), and counts that contradict each other.
Every problem is reported at once, each under its dotted key.  Nothing here imports torch.

What cannot be known before loading is checked by the job, first thing: a Hugging Face repo or
an open_clip pretrained tag that is not in the local cache (``ModelUnavailableError``), and the
layers of such models.  Counts larger than a dataset (``n_images``, ``images``, ...) are capped
by the job and the cap is logged and recorded (``n``, ``of_n``) in its outputs' provenance.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterator


def _model_refs(s) -> Iterator[tuple[str, str]]:
    inv, heads = s.inversion, s.heads
    yield from ((f"zeroshot.models[{i}]", m) for i, m in enumerate(s.zeroshot.models))
    yield from ((f"inversion.extractors[{i}]", m) for i, m in enumerate(inv.extractors))
    yield from ((f"inversion.similarity.scorers[{i}]", m)
                for i, m in enumerate(inv.similarity.scorers))
    yield "inversion.operators.model", inv.operators.model
    yield from ((f"heads.models[{i}]", m) for i, m in enumerate(heads.models))
    yield from ((f"neurons.models[{i}]", m) for i, m in enumerate(s.neurons.models))
    yield "sae.model", s.sae.model
    yield from ((f"purity.pairs[{i}][{j}]", m) for i, pair in enumerate(s.purity.pairs)
                for j, m in enumerate(pair))
    yield from ((f"purity.misalign.models[{i}]", m) for i, m in enumerate(s.purity.misalign.models))


def model_problem(spec: str, toy_models) -> str | None:
    """Why model ``spec`` cannot exist, or None when it may (see the module docstring)."""
    from ..models.layout import open_clip_archs
    from ..specs import parse_model_spec

    try:
        parsed = parse_model_spec(spec)
    except ValueError as err:
        return str(err)
    if parsed.scheme == "toy" and parsed.name not in toy_models:
        return (f"toy model {parsed.name!r} is not defined under toy_models "
                f"(defined: {sorted(toy_models)})")
    if parsed.scheme == "open_clip" and not parsed.name.startswith(("hf-hub:", "local-dir:")):
        archs = open_clip_archs()
        if archs and parsed.name not in archs:
            close = [a for a in archs if a.lower().startswith(parsed.name.lower()[:5])][:8]
            return (f"open_clip has no architecture {parsed.name!r}"
                    + (f" (similar: {close})" if close else ""))
    if parsed.scheme == "hf" and parsed.name.startswith(("/", ".", "~")):
        if not Path(parsed.name).expanduser().is_dir():
            return f"local model directory {parsed.name} does not exist"
    return None


def _splits_of(dataset: str, toy) -> dict[str, int | None] | None:
    """``{split: images (None: unknown before reading)}`` of ``dataset``; None if unknown."""
    from ..data.readers import SPLITS
    from ..toy import world

    if dataset in world.TOY_DATASETS:
        return world.split_sizes(dataset, toy)
    if dataset in SPLITS:
        return dict.fromkeys(SPLITS[dataset])
    return None


def _duplicates(values) -> list:
    return [v for v, n in Counter(values).items() if n > 1]


def check_references(s) -> list[tuple[str, str]]:
    """``[(dotted key, problem)]`` of :class:`~cliplens.core.settings.Settings` ``s`` (see the
    module docstring); empty when everything it names exists and agrees."""
    from ..data.tasks import TASKS
    from ..models.layout import planned_layout, resolve_layer, resolve_layers

    out: list[tuple[str, str]] = []
    bad_models = set()
    for key, spec in _model_refs(s):
        why = model_problem(spec, s.toy_models)
        if why:
            out.append((key, why))
            bad_models.add(spec)

    for key, values in (("zeroshot.models", s.zeroshot.models),
                        ("zeroshot.tasks", s.zeroshot.tasks),
                        ("inversion.extractors", s.inversion.extractors),
                        ("inversion.similarity.scorers", s.inversion.similarity.scorers),
                        ("heads.models", s.heads.models), ("heads.tasks", s.heads.tasks),
                        ("neurons.models", s.neurons.models),
                        ("neurons.sparse.text_sets", s.neurons.sparse.text_sets),
                        ("purity.tasks", s.purity.tasks),
                        ("toy.spurious.classes", s.toy.spurious.classes)):
        dup = _duplicates(values)
        if dup:
            out.append((key, f"names {dup} more than once; each may appear once"))

    # tasks
    task_refs = [*((f"zeroshot.tasks[{i}]", t) for i, t in enumerate(s.zeroshot.tasks)),
                 *((f"heads.tasks[{i}]", t) for i, t in enumerate(s.heads.tasks)),
                 ("heads.segmentation.task", s.heads.segmentation.task),
                 *((f"purity.tasks[{i}]", t) for i, t in enumerate(s.purity.tasks))]
    if s.heads.spurious.task is not None:
        task_refs.append(("heads.spurious.task", s.heads.spurious.task))
    for key, task in task_refs:
        if task not in TASKS:
            out.append((key, f"unknown zero-shot task {task!r}; known: {sorted(TASKS)}"))
    for task in s.zeroshot.templates:
        if task not in s.zeroshot.tasks:
            out.append((f"zeroshot.templates.{task}",
                        f"templates for {task!r}, which zeroshot.tasks does not evaluate "
                        f"({list(s.zeroshot.tasks)})"))
    if s.heads.spurious.task is not None and s.heads.spurious.task not in (
            "toy-spurious", "waterbirds"):
        out.append(("heads.spurious.task", "must be toy-spurious or waterbirds (a task with "
                                           "a spurious attribute), or null"))

    # datasets and splits
    inv, ops, hs = s.inversion, s.inversion.operators, s.heads
    spur_ds = TASKS[hs.spurious.task].dataset if hs.spurious.task in TASKS else None
    split_refs = [("heads.fit", hs.fit.dataset, hs.fit.split),
                  ("heads.segmentation", hs.segmentation.dataset, hs.segmentation.split),
                  ("inversion", inv.dataset, inv.train_split),
                  ("inversion", inv.dataset, inv.eval_split),
                  ("inversion.operators", ops.dataset, ops.train_split),
                  ("inversion.operators", ops.dataset, ops.test_split),
                  ("neurons", s.neurons.dataset, s.neurons.split)]
    if s.neurons.shift.dataset is not None:
        split_refs.append(("neurons.shift", s.neurons.shift.dataset, s.neurons.shift.split))
    if spur_ds is not None:
        split_refs.append(("heads.spurious.fit_split", spur_ds, hs.spurious.fit_split))
    if hs.factors.enabled and hs.fit.dataset.startswith("toy"):
        split_refs.append(("heads.factors", hs.fit.dataset, hs.factors.split))
    seen_ds = set()
    for key, dataset, split in split_refs:
        splits = _splits_of(dataset, s.toy)
        if splits is None:
            if (key, dataset) not in seen_ds:
                from ..data.registry import known_datasets

                out.append((f"{key}.dataset" if not key.endswith("_split") else key,
                            f"unknown dataset {dataset!r}; known: {sorted(known_datasets())}"))
                seen_ds.add((key, dataset))
        elif split not in splits:
            where = key if key.endswith("_split") else f"{key} split"
            out.append((where, f"dataset {dataset!r} has no split {split!r}; it has "
                               f"{sorted(splits)}"))

    # layers and heads of the towers known before loading
    if inv.operators.model not in inv.extractors:
        out.append(("inversion.operators.model",
                    f"{inv.operators.model!r} is not one of inversion.extractors "
                    f"{list(inv.extractors)}: the operators run on an extractor's "
                    "reconstructor"))
    for spec in inv.extractors:
        lay = None if spec in bad_models else planned_layout(spec, s.toy_models)
        if lay is not None:
            try:
                resolve_layer(inv.layer, lay.blocks)
            except ValueError as err:
                out.append(("inversion.layer", f"{spec}: {err}"))
    for spec in hs.models:
        lay = None if spec in bad_models else planned_layout(spec, s.toy_models)
        if lay is None:
            continue
        try:
            kept = resolve_layers(hs.layers, lay.blocks)
        except ValueError as err:
            out.append(("heads.layers", f"{spec}: {err}"))
            continue
        mapped = tuple(range(lay.blocks - min(hs.segmentation.layers, lay.blocks), lay.blocks))
        for key, pairs, layers, what in (
                ("heads.segmentation.heads", hs.segmentation.heads, mapped,
                 "the last heads.segmentation.layers blocks"),
                ("heads.neighbours.heads", hs.neighbours.heads, kept, "its kept layers"),
                ("heads.spurious.heads", hs.spurious.heads, kept, "its kept layers")):
            wrong = [list(p) for p in pairs if p[0] not in layers or not 0 <= p[1] < lay.heads]
            if wrong:
                out.append((key, f"{spec}: {wrong} are not [layer, head] pairs of {what} "
                                 f"{list(layers)} x heads 0..{lay.heads - 1}"))

    out += _neuron_problems(s, bad_models)
    out += _sae_problems(s, bad_models)
    out += _purity_problems(s, bad_models)

    # counts that contradict each other
    ts = hs.textspan
    if ts.replace_n_texts and max(ts.replace_n_texts) > ts.n_texts:
        out.append(("heads.textspan.replace_n_texts",
                    f"asks for {max(ts.replace_n_texts)} texts per head, but "
                    f"heads.textspan.n_texts = {ts.n_texts} are chosen"))
    return out


#: texts of the builtin sets whose size is fixed (clip-words has neurons.sparse.n_words at most)
_BUILTIN_SIZES = {"imagenet-classes": 1000, "pascal-context": 59}


def _text_count(sources, n_words: int) -> int | None:
    """How many texts ``sources`` give at most (None when a file is missing: the job says)."""
    from ..text.textsets import read_text_file, toy_descriptions, toy_words

    seen: set[str] = set()
    count = 0
    for src in sources:
        kind, _, arg = src.partition(":")
        if kind == "file":
            if not Path(arg).is_file():
                return None
            seen.update(read_text_file(arg))
        elif arg == "clip-words":
            count += n_words
        elif arg in _BUILTIN_SIZES:
            count += _BUILTIN_SIZES[arg]
        else:
            seen.update(toy_words() if arg == "toy-words"
                        else toy_descriptions("ru" if arg.endswith("-ru") else "en"))
    return count + len(seen)


def _neuron_problems(s, bad_models) -> list[tuple[str, str]]:
    """Study 003: each model's tower must carry pairs (CLIP ResNet) or neurons (class-token
    ViT), the ViT layer must exist, top-k must fit the images and k the texts and width."""
    from ..models.layout import planned_layout, planned_tower

    ns, out = s.neurons, []
    for i, spec in enumerate(ns.models):
        tower = None if spec in bad_models else planned_tower(spec, s.toy_models)
        if tower is None:
            continue
        kind, width = tower
        if kind not in ("vit", "resnet"):
            out.append((f"neurons.models[{i}]",
                        f"{spec} has a {kind} tower: study 003 follows the attention-pool pairs "
                        "of a CLIP ResNet or the MLP neurons of a class-token ViT"))
            continue
        lay = planned_layout(spec, s.toy_models) if kind == "vit" else None
        if lay is not None and not -lay.blocks <= ns.layer < lay.blocks:
            out.append(("neurons.layer", f"{spec}: MLP layer {ns.layer} is outside its "
                                         f"{lay.blocks} blocks (0..{lay.blocks - 1}, or "
                                         f"-{lay.blocks}..-1)"))
        if kind == "vit" and lay is not None and ns.layer in (lay.blocks - 1, -1):
            out.append(("neurons.layer", f"{spec}: block {ns.layer} is the last; its neurons "
                                         "have no later attention layer to pass through"))
        if width is not None and ns.sparse.k > width:
            out.append(("neurons.sparse.k", f"{spec}: k = {ns.sparse.k} texts per component, "
                                            f"but its embeddings have width {width}"))
    n_texts = _text_count(ns.sparse.text_sets, ns.sparse.n_words)
    if n_texts is not None and ns.sparse.k > n_texts:
        out.append(("neurons.sparse.k", f"k = {ns.sparse.k} texts per component, but "
                                        f"neurons.sparse.text_sets give {n_texts}"))
    ef = ns.effects
    if ef.task is not None:
        from ..data.tasks import TASKS

        if ef.task not in TASKS:
            out.append(("neurons.effects.task", f"unknown zero-shot task {ef.task!r}; known: "
                                                f"{sorted(TASKS)}"))
        if ef.replace_n_texts and max(ef.replace_n_texts) > ns.sparse.k:
            out.append(("neurons.effects.replace_n_texts",
                        f"asks for {max(ef.replace_n_texts)} texts, but neurons.sparse.k = "
                        f"{ns.sparse.k} are chosen per component"))
    seg = ns.segmentation
    if seg.task is not None:
        from ..data.tasks import TASKS

        if seg.task not in TASKS:
            out.append(("neurons.segmentation.task", f"unknown zero-shot task {seg.task!r}; "
                                                     f"known: {sorted(TASKS)}"))
    sh = ns.shift
    if sh.dataset is not None and sh.truth is not None:
        from ..toy.world import FACTORS

        values = FACTORS.get(sh.truth["factor"])
        if values is None or sh.truth["value"] not in values:
            out.append(("neurons.shift.truth", f"{sh.truth['factor']} = {sh.truth['value']!r} "
                                               "is not a toy factor value; toy factors: "
                                               f"{ {f: list(v) for f, v in FACTORS.items()} }"))
    n = (_splits_of(ns.dataset, s.toy) or {}).get(ns.split)
    if n is not None:
        n = n if ns.images is None else min(n, ns.images)
        if ns.retrieval.images > n:
            out.append(("neurons.retrieval.images",
                        f"{ns.retrieval.images} images per row, but the store holds {n} images "
                        f"of {ns.dataset}/{ns.split}"))
        if ns.components.top_k > n:
            out.append(("neurons.components.top_k",
                        f"top {ns.components.top_k} images per unit, but the store holds "
                        f"{n} images of {ns.dataset}/{ns.split}"))
    return out


def _sae_problems(s, bad_models) -> list[tuple[str, str]]:
    """Study 002: tasks exist, each task's dataset has the fit split, k fits the dictionary
    (expansion x the model's embedding width, where known before loading), and the baseline
    interpreter's text sets are the same size in every language."""
    from ..data.tasks import TASKS
    from ..models.layout import planned_tower

    sa, out, seen = s.sae, [], set()
    for i, t in enumerate(sa.tasks):
        if t not in TASKS:
            out.append((f"sae.tasks[{i}]", f"unknown zero-shot task {t!r}; known: {sorted(TASKS)}"))
            continue
        splits = _splits_of(TASKS[t].dataset, s.toy)
        if TASKS[t].dataset in seen:
            continue
        seen.add(TASKS[t].dataset)
        if splits is not None and sa.fit_split not in splits:
            out.append(("sae.fit_split", f"dataset {TASKS[t].dataset!r} (task {t}) has no split "
                                         f"{sa.fit_split!r}; it has {sorted(splits)}"))
    tower = None if sa.model in bad_models else planned_tower(sa.model, s.toy_models)
    width = tower[1] if tower else None
    if width:
        for name, spec in sa.saes.items():
            m = int(round(spec.expansion * width))
            if spec.k is not None and spec.k > m:
                out.append((f"sae.saes.{name}.k", f"k = {spec.k} active latents, but the "
                                                  f"dictionary has {m} ({spec.expansion:g} x "
                                                  f"{sa.model}'s width {width})"))
    it = sa.interpret
    if it.interpreter == "baseline" and len(it.languages) > 1:
        sizes = {lang: _text_count([getattr(it.text_sets, lang)], 5000) for lang in it.languages}
        if None not in sizes.values() and len(set(sizes.values())) > 1:
            out.append(("sae.interpret.text_sets", f"the baseline's text sets must be item for "
                                                   f"item translations; their sizes differ: "
                                                   f"{sizes}"))
    return out


def _purity_problems(s, bad_models) -> list[tuple[str, str]]:
    """Study 004 (its tasks are checked with every other study's): each model has separate
    projections (not SigLIP) and every k of the sweep fits its embedding width (where known
    before loading); the models fine-tuned are CLIP ViTs with a captioned dataset (toy, or
    real with captions: toy rich/poor captions only on toy ones)."""
    from ..data.readers import CAPTIONED
    from ..models.layout import planned_tower

    pu, out = s.purity, []
    for i, pair in enumerate(pu.pairs):
        for j, spec in enumerate(pair):
            tower = None if spec in bad_models else planned_tower(spec, s.toy_models)
            if tower is None:
                continue
            kind, width = tower
            if kind == "siglip":
                out.append((f"purity.pairs[{i}][{j}]", f"{spec} has no separate image projection "
                                                       f"(SigLIP pools with an attention head)"))
            elif width and max(pu.pruning.keep) > width:
                out.append(("purity.pruning.keep", f"k = {max(pu.pruning.keep)} dimensions kept, "
                                                   f"but {spec}'s embedding has {width}"))
    mis = pu.misalign
    for i, spec in enumerate(mis.models):
        tower = None if spec in bad_models else planned_tower(spec, s.toy_models)
        if tower is not None and tower[0] != "vit":
            out.append((f"purity.misalign.models[{i}]", f"{spec} is a {tower[0]} model; the "
                                                        f"projections are fine-tuned on CLIP ViTs"))
    toy = mis.dataset.startswith("toy")
    if mis.models and not toy and mis.dataset not in CAPTIONED:
        out.append(("purity.misalign.dataset", f"{mis.dataset!r} has no captions; misalignment "
                                               f"reads a toy dataset's or one of {CAPTIONED}"))
    elif mis.models and not toy and mis.captions != "rich":
        out.append(("purity.misalign.captions", f"{mis.dataset!r} has one kind of caption; "
                                                f"poor captions are the toy world's"))
    splits = _splits_of(mis.dataset, s.toy)
    if mis.models and splits is not None and mis.split not in splits:
        out.append(("purity.misalign.split", f"dataset {mis.dataset!r} has no split "
                                             f"{mis.split!r}; it has {sorted(splits)}"))
    return out


def results_problem(results: str) -> str | None:
    """Why outputs cannot be written under folder ``results`` (None when they can): it is a
    file, or neither it nor its nearest existing parent is a writable directory."""
    import os

    path = Path(results).expanduser()
    if path.exists() and not path.is_dir():
        return f"{path} exists and is not a directory"
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"{path} cannot be created: {probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user, so nothing can be written under {path}"
    return None


def planned_shards(requested: int, dataset: str, split: str, batch_size: int, toy: Any,
                   rows: int | None = None) -> tuple[int, str | None]:
    """The shard count a cache of ``dataset``/``split`` (its first ``rows``) is cut into: at most
    one shard per ``batch_size`` batch of the rows when they are known before anything runs
    (toy splits), since shards are cut on batch boundaries and more would be empty.  Returns
    (count, a sentence stating the cap, or None)."""
    sizes = _splits_of(dataset, toy) or {}
    n = sizes.get(split)
    if n is None:
        return requested, None
    n = n if rows is None else min(n, rows)
    most = max(1, -(-n // batch_size))
    if requested <= most:
        return requested, None
    return most, (f"{requested} shards requested for the {n} rows of {dataset}/{split} in "
                  f"{batch_size}-row batches: capped at {most} (more would be empty)")
