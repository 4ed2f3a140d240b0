"""Study 001 analyses on a decomposition cache (see :mod:`.decompose` and :mod:`.store`).

A cache read by :func:`~.store.read_decomposition` holds, for N images, ``heads`` [N, L, H,
D] (each kept layer's heads, summed over source tokens), ``mlps`` [N, L, D] and the remaining
terms.  :func:`split_terms` groups them as ``heads``, ``mlps`` and ``other`` [N, D] (embedding
term + out-projection biases + rest + bias + SigLIP's pooling MLP) so that

    embedding = heads.sum((1, 2)) + mlps.sum(1) + other

exactly (up to the cache's dtype).  Everything here is a pure function of such arrays:

* :func:`ablation_curves` -- accuracy while mean-ablating the first ``l`` layers' attention heads,
  MLPs, or only the CLS -> CLS part of the attention;
* :func:`group_accuracies` -- per-group and worst-group accuracy (spurious correlations);
* :func:`probe_factors` -- which labelled factor a head's direct effect predicts best (a linear
  probe, the toy world's ground truth for TextSpan);
* :func:`token_maps` -- spatial maps from per-token contributions;
* :func:`nearest_neighbours` -- images whose direct effect through one head is most similar;
* :func:`spurious_attribute` / :func:`balanced_rows` -- the attribute a spurious-correlation
  dataset's label leans on, and a subset where it says nothing about the label.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ...core.text.zeroshot import argmax_accuracy as accuracy
from .textspan import embeddings_from_terms, mean_ablate


def split_terms(dec: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(heads [N, L, H, D] -- or [N, L, D] if read summed over heads --, mlps [N, L, D],
    other [N, D]) of decomposition arrays ``dec``, in float32; ``other`` = embed + sum of
    attn_bias + rest + bias (+ pool_mlp)."""
    heads = np.asarray(dec["heads"], dtype=np.float32)
    mlps = np.asarray(dec["mlps"], dtype=np.float32)
    other = (np.asarray(dec["embed"], np.float64) + np.asarray(dec["attn_bias"], np.float64).sum(1)
             + np.asarray(dec["rest"], np.float64) + np.asarray(dec["bias"], np.float64))
    if dec.get("pool_mlp") is not None:
        other = other + np.asarray(dec["pool_mlp"], np.float64)
    return heads, mlps, other.astype(np.float32)


def ablation_curves(heads: np.ndarray, mlps: np.ndarray, other: np.ndarray,
                    classifier: np.ndarray, labels: np.ndarray,
                    heads_cls: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Zero-shot accuracy [L + 1] while mean-ablating the first ``l`` kept layers, l = 0 .. L.

    ``attention``: every head of layers ``0 .. l-1`` replaced by its mean over the images;
    ``mlp``: the MLP outputs of those layers; ``cls_to_cls`` (when ``heads_cls``, the part of
    each head that the class token reads from itself, is given): only that part.  ``heads`` and
    ``heads_cls`` are [N, L, H, D] or already summed over heads [N, L, D] (mean-ablating every
    head of a layer is mean-ablating their sum: the curves are the same).
    ``classifier`` [D, K] (columns = class text embeddings), ``labels`` [N].  Entry 0 of every
    curve is the unablated accuracy.  Mean-ablating a term changes the embedding by
    ``mean(term) - term``; what each curve shows is how much the classification relies on the
    image-to-image variation of those terms."""
    if heads.ndim == 3:
        heads = heads[:, :, None]
    if heads_cls is not None and heads_cls.ndim == 3:
        heads_cls = heads_cls[:, :, None]
    L = heads.shape[1]
    out: dict[str, list[float]] = {"attention": [], "mlp": []}
    if heads_cls is not None:
        out["cls_to_cls"] = []
    for n in range(L + 1):
        which = np.arange(L) < n
        h = mean_ablate(heads, which, axis=1)
        out["attention"].append(accuracy(embeddings_from_terms(h, mlps, other), classifier, labels))
        m = mean_ablate(mlps, which, axis=1)
        out["mlp"].append(accuracy(embeddings_from_terms(heads, m, other), classifier, labels))
        if heads_cls is not None:
            c = heads - heads_cls + mean_ablate(heads_cls, which, axis=1)
            out["cls_to_cls"].append(accuracy(embeddings_from_terms(c, mlps, other), classifier,
                                              labels))
    return {k: np.asarray(v) for k, v in out.items()}


def group_accuracies(pred: np.ndarray, labels: np.ndarray, groups: np.ndarray
                     ) -> dict[int, float]:
    """Accuracy of ``pred`` within each group id of ``groups`` [N] (every group present)."""
    pred, labels, groups = np.asarray(pred), np.asarray(labels), np.asarray(groups)
    return {int(g): float((pred[groups == g] == labels[groups == g]).mean())
            for g in np.unique(groups)}


def probe_factors(C_fit: np.ndarray, y_fit: Mapping[str, np.ndarray], C_test: np.ndarray,
                  y_test: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, dict[str, float]]:
    """How well one head's direct effect predicts each factor: a multinomial logistic
    regression (sklearn, on standardised features) fitted on ``C_fit`` [N, D] with the labels
    ``y_fit[factor]`` [N], scored on ``C_test`` [N', D].  Per factor: ``accuracy``, ``chance``
    (the test frequency of the most common fitted class) and ``score = (accuracy - chance) /
    (1 - chance)`` -- 0 at chance, 1 perfect, comparable across factors with different numbers
    of classes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = {}
    for factor, y in y_fit.items():
        y, yt = np.asarray(y), np.asarray(y_test[factor])
        if len(np.unique(y)) < 2:
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
        clf.fit(C_fit, y)
        acc = float((clf.predict(C_test) == yt).mean())
        values, counts = np.unique(y, return_counts=True)
        chance = float((yt == values[np.argmax(counts)]).mean())
        out[factor] = {"accuracy": acc, "chance": chance,
                       "score": (acc - chance) / (1 - chance) if chance < 1 else 0.0}
    return out


def token_maps(tokens: np.ndarray, direction: np.ndarray, has_cls: bool) -> np.ndarray:
    """Spatial maps from per-token contributions ``tokens`` [B, L, H, T, D] (see
    :func:`~.decompose.decompose` with ``per_token=True``) and a direction [D] or one per image
    [B, D]: ``maps[b, l, h] = tokens[b, l, h, t] . direction`` over the patch tokens, reshaped to
    the square patch grid [B, L, H, g, g].  ``has_cls``: token 0 is the class token (dropped)."""
    t = np.asarray(tokens)
    if has_cls:
        t = t[:, :, :, 1:]
    d = np.asarray(direction, dtype=np.float64)
    if d.ndim == 1:
        m = np.einsum("blhtd,d->blht", t, d)
    else:
        m = np.einsum("blhtd,bd->blht", t, d)
    g = int(round(np.sqrt(m.shape[-1])))
    if g * g != m.shape[-1]:
        raise ValueError(f"{m.shape[-1]} patch tokens do not form a square grid")
    return m.reshape(m.shape[:3] + (g, g))



def nearest_neighbours(C: np.ndarray, queries: Sequence[int], k: int = 5,
                       with_similarity: bool = False):
    """For each query row, the ``k`` other rows of ``C`` [N, D] with the highest cosine
    similarity after centring (the mean direct effect is shared by every image and would
    dominate the cosine) -> [len(queries), k] row indices, most similar first (and, with
    ``with_similarity``, those cosines [len(queries), k])."""
    X = np.asarray(C, dtype=np.float64)
    X = X - X.mean(0)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    sims = X[list(queries)] @ X.T
    sims[np.arange(len(queries)), list(queries)] = -np.inf
    order = np.argsort(-sims, axis=1)[:, :k]
    if with_similarity:
        return order, np.take_along_axis(sims, order, axis=1)
    return order


def spurious_attribute(ds) -> tuple[np.ndarray, list[str]]:
    """The attribute a spurious-correlation dataset's label agrees with, and its value names:
    Waterbirds' ``places`` (land, water), toy-spurious' ``background`` (dark, light)."""
    if hasattr(ds, "places"):
        return np.asarray(ds.places), ["land", "water"]
    if hasattr(ds, "factor_labels") and "background" in ds.factor_labels:
        from ...core.toy.world import classnames

        return np.asarray(ds.factor_labels["background"]), list(classnames("background"))
    raise ValueError(f"{ds.name} has no spurious attribute (places or background)")


def balanced_rows(labels: np.ndarray, attribute: np.ndarray, seed: int = 0) -> np.ndarray:
    """Row indices with every (label, attribute) group equally often (the smallest group's
    size), so that within them the attribute says nothing about the label."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero((labels == y) & (attribute == a))
              for y in np.unique(labels) for a in np.unique(attribute)]
    k = min(len(g) for g in groups)
    if k < 2:
        raise ValueError("a (label, attribute) group has fewer than 2 images: cannot balance")
    return np.sort(np.concatenate([rng.choice(g, k, replace=False) for g in groups]))
