"""Zero-shot classification from text prompts.

A class ``c`` with name ``n_c`` and templates ``t_1 .. t_T`` (format strings with one ``{}``)
gets the classifier row

    w_c = normalize( (1/T) * sum_j normalize(f_text(t_j.format(n_c))) )

(``normalize(v) = v / ||v||_2``), the prompt-ensembled class embedding of Radford et al. 2021.  Tasks (class names, templates,
labels) come from :mod:`cliplens.core.data.tasks`; named template sets are resolved there.
An image with embedding ``x`` is scored by cosine similarity, ``s_c(x) = <normalize(x), w_c>``,
and predicted as ``argmax_c s_c(x)``; top-k accuracy counts an image correct when its label is
among the k largest scores.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models.base import ClipModel


def class_embeddings(
    encode: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """``W`` [C, D] (float32): ``W[c] = normalize(mean_j normalize(encode([t_j.format(n_c)])))``.

    ``encode`` maps a list of strings to text embeddings [n, D] (any model: a loaded
    :class:`ClipModel`'s ``encode_text``, a toy model being trained); at most ``batch_size``
    prompts are encoded at once."""
    if not classnames:
        raise ValueError("no class names")
    texts = [t.format(c) for c in classnames for t in templates]
    parts = [F.normalize(encode(texts[a:a + batch_size]).float(), dim=-1)
             for a in range(0, len(texts), batch_size)]
    emb = torch.cat(parts).reshape(len(classnames), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


def build_classifier(
    model: ClipModel,
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """The zero-shot classifier of ``model``: ``W`` [C, D] (float32, on the model's device), rows
    of unit norm, ``W[c] = normalize(mean_j normalize(encode_text(templates[j].format(c))))``.

    open_clip models go through ``open_clip.build_zero_shot_classifier`` (the same math: it
    normalises each prompt embedding, averages over templates and renormalises; it returns
    [D, C], transposed here); any other model through :func:`class_embeddings`.  This is the one
    place a zero-shot classifier is built from a model.
    """
    if not classnames:
        raise ValueError("no class names")
    templates = list(templates)
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if not templates or bad:
        raise ValueError(f"templates must be a non-empty list of strings with exactly one '{{}}' "
                         f"each (named sets: cliplens.core.data.tasks.resolve_templates); bad: "
                         f"{bad}")
    with torch.inference_mode():
        tokenizer = getattr(model, "tokenizer", None)
        if model.library == "open_clip" and tokenizer is not None:
            import open_clip

            w = open_clip.build_zero_shot_classifier(
                model.model, tokenizer, list(classnames), list(templates),
                num_classes_per_batch=max(1, batch_size // len(templates)),
                device=model.device,
            )
            return w.T.float().contiguous()
        return class_embeddings(lambda texts: model.encode_text(texts, normalize=True),
                                classnames, templates, batch_size)


def task_classifier(model: ClipModel, task_name: str, roots: Mapping[str, str],
                    templates: Sequence[str] | None = None):
    """(classifier [D, K] float32 numpy, the task's dataset split, class names) of zero-shot task
    ``task_name`` (:mod:`cliplens.core.data.tasks`) for ``model``; ``roots``: ``results`` and
    ``resources`` folders."""
    from ..data.tasks import open_task

    task, ds, classnames, tmpl = open_task(task_name, templates=templates, **roots)
    W = build_classifier(model, classnames, tmpl).cpu().numpy().T.astype(np.float32)
    return W, ds, classnames


def argmax_accuracy(embeddings: np.ndarray, classifier: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``argmax(embeddings @ classifier)``, ``classifier`` [D, K] (normalising
    a row of ``embeddings`` rescales it by a positive number and changes no argmax), in the
    arrays' own precision (e.g. embeddings summed from decomposed terms, float64)."""
    return float((np.argmax(embeddings @ classifier, 1) == np.asarray(labels)).mean())


def class_direction(classifier: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """Text direction(s) of class ``k`` against the others: ``w_k - mean_j w_j`` ([D] or [N, D]),
    ``classifier`` [D, K].  Projecting a map on it scores what favours class k over an average
    class (the part every class shares cancels)."""
    W = np.asarray(classifier, dtype=np.float64)
    return W[:, k].T - W.mean(1)


def scores(
    image_emb: np.ndarray | torch.Tensor, classifier: torch.Tensor | np.ndarray
) -> torch.Tensor:
    """Cosine similarities [N, C] of images [N, D] to classifier rows [C, D] (float32, CPU)."""
    x = F.normalize(torch.as_tensor(np.asarray(image_emb), dtype=torch.float32), dim=-1)
    w = torch.as_tensor(classifier).detach().to("cpu", torch.float32)
    if x.shape[-1] != w.shape[-1]:
        raise ValueError(f"image embeddings have dim {x.shape[-1]}, classifier {w.shape[-1]}")
    return x @ F.normalize(w, dim=-1).T


def predict(
    image_emb: np.ndarray | torch.Tensor,
    classifier: torch.Tensor | np.ndarray,
    k: int = 1,
    chunk: int = 8192,
) -> np.ndarray:
    """Top-``k`` class indices, best first: int64 [N] for ``k=1``, else [N, k]."""
    out = []
    for a in range(0, len(image_emb), chunk):
        s = scores(image_emb[a : a + chunk], classifier)
        out.append(s.topk(min(k, s.shape[1]), dim=1).indices.numpy())
    n_cols = min(k, len(classifier))
    top = np.concatenate(out) if out else np.zeros((0, n_cols), np.int64)
    return top[:, 0] if k == 1 else top


def zeroshot_accuracy(
    image_emb: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    classifier: torch.Tensor | np.ndarray,
) -> dict[str, Any]:
    """Accuracy of the zero-shot classifier on labelled image embeddings.

    Returns ``n``, ``classes`` (C), ``top1`` = mean(pred == label), ``top5`` (label among the
    5 best scores; only when C >= 5, else None), ``per_class`` (list of C top-1 accuracies over
    the images of each class, None for a class without images) and ``mean_per_class`` (their
    mean over classes with images).  Accuracies are fractions in [0, 1].
    """
    labels = np.asarray(labels).astype(np.int64)
    n, n_classes = len(labels), len(classifier)
    if len(image_emb) != n:
        raise ValueError(f"{len(image_emb)} embeddings but {n} labels")
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}); got [{labels.min()}, "
                         f"{labels.max()}]")
    k = 5 if n_classes >= 5 else 1
    top = predict(image_emb, classifier, k=k)
    top = top[:, None] if top.ndim == 1 else top
    hit1 = top[:, 0] == labels
    counts = np.bincount(labels, minlength=n_classes)
    right = np.bincount(labels, weights=hit1, minlength=n_classes)
    per_class = [float(r / c) if c else None for r, c in zip(right, counts)]
    seen = [p for p in per_class if p is not None]
    return {
        "n": int(n),
        "classes": int(n_classes),
        "top1": float(hit1.mean()) if n else float("nan"),
        "top5": float((top == labels[:, None]).any(1).mean()) if n_classes >= 5 and n else None,
        "per_class": per_class,
        "mean_per_class": float(np.mean(seen)) if seen else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# toy models being trained

#: toy factors scored zero-shot after training (the toy model's metadata ``zeroshot``)
ZEROSHOT_FACTORS = ("colour", "shape", "position", "size", "background")


@torch.no_grad()
def toy_classifier(toy, classnames: Sequence[str], templates: Sequence[str],
                   device="cpu") -> torch.Tensor:
    """The zero-shot classifier [C, D] of a toy model being trained
    (:class:`cliplens.core.toy.models.ToyModel`: :func:`class_embeddings` on its own
    tokenizer and text tower, in eval mode)."""
    toy.train(False)
    return class_embeddings(lambda texts: toy.encode_text(toy.tokenize(texts).to(device)).cpu(),
                            classnames, templates)


def toy_zeroshot(toy, split: Mapping[str, Any], factors: Sequence[str] = ZEROSHOT_FACTORS,
                 pixels: torch.Tensor | None = None, device="cpu") -> dict[str, float]:
    """Zero-shot top-1 accuracy per toy factor of a toy model being trained on ``split``
    (``images`` uint8 and ``labels``), with the toy world's class names and templates."""
    from ..toy import world
    from ..toy.training import embed_images

    if pixels is None:
        pixels = toy.preprocess(split["images"])
    img = embed_images(toy, pixels, device=device)
    out = {}
    for factor in factors:
        w = toy_classifier(toy, world.classnames(factor), world.ZEROSHOT_TEMPLATES[factor],
                           device=device)
        pred = (img @ w.T).argmax(1).numpy()
        out[factor] = float(np.mean(pred == np.asarray(split["labels"][factor])))
    return out
