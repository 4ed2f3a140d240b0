"""Colour operators in token space: R<->B swap, blue suppression and colourisation as maps fitted
on pairs (tokens of an image, tokens of its transformed copy, :mod:`.operators`), judged in
feature space (R^2) and in image space (reconstructions from operated tokens against the truly
transformed images)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import operators as ops
from .reconstructor import Reconstructor, reconstruct, to_uint8

OPERATOR_TASKS = ops.OPERATOR_TASKS


def _normed(x: np.ndarray, dtype=np.float64) -> np.ndarray:
    x = np.asarray(x, dtype=dtype)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pair_stats(source, target, rows: int | None = None, chunk: int = 32,
               normalize: bool = True) -> ops.PairStats:
    """:class:`~.operators.PairStats` of token pairs from two aligned token caches
    (:class:`~cliplens.core.caches.tokens.TokenCache`): every token of image i in ``source`` paired with the
    token at the same grid position of image i in ``target`` (L2-normalised if ``normalize``, as
    the reconstructor consumes them), over the first ``rows`` images."""
    n = min(len(source), len(target)) if rows is None else min(rows, len(source), len(target))
    st = None
    for a in range(0, n, chunk):
        idx = np.arange(a, min(a + chunk, n))
        x, y = source.read(idx), target.read(idx)
        if normalize:
            x, y = _normed(x), _normed(y)
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        st = ops.PairStats(x.shape[1]) if st is None else st
        st.update(x, y)
    if st is None:
        raise ValueError("no token pairs")
    return st


def _r2(y: np.ndarray, y_hat: np.ndarray, chunk: int = 64) -> float:
    acc = ops.R2()
    for a in range(0, len(y), chunk):
        acc.update(y[a:a + chunk], y_hat[a:a + chunk])
    return acc.value


def fit_colour_operators(train: Mapping[str, Any], tasks: Mapping[str, Sequence[str]],
                         ridge: float = 0.0, rows: int | None = None
                         ) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Fit each task's operators on training token pairs.  ``train``: view key -> TokenCache;
    ``tasks``: task name (:data:`OPERATOR_TASKS`) -> operator kinds
    (:data:`.naming.OPERATOR_KINDS`).  Returns task -> kind -> (W, b)."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for task, kinds in tasks.items():
        src, tgt, _ = OPERATOR_TASKS[task]
        st = pair_stats(train[src], train[tgt], rows=rows)
        out[task] = {kind: ops.fit_operator(kind, st, ridge=ridge) for kind in kinds}
    return out


def evaluate_colour_operators(
    fitted: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    test_tokens: Mapping[str, Any],
    test_images: Mapping[str, torch.Tensor],
    net: Reconstructor,
    *,
    n_examples: int = 6,
    batch_size: int = 64,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Judge fitted operators on held-out images.

    ``test_tokens``: view -> TokenCache; ``test_images``: view -> targets [N, 3, S, S] in [-1, 1]
    (the extractor's view of the test images).  For each task (source view s, target view t) and
    operator (W, b), with f_s, f_t the L2-normalised tokens:

    * ``r2``: R^2 of f_s W + b against f_t (:class:`.operators.R2`), and ``r2_identity``
      of f_s itself (no operator) for reference;
    * ``mse_vs_transformed`` / ``mse_vs_original``: pixel MSE (images in [0, 1]) of the
      reconstruction from f_s W + b against the truly transformed image t and the untransformed
      image s; for reference the rows ``kind = none`` (reconstruction from f_s) and
      ``kind = true`` (reconstruction from f_t, the best an operator can do through this
      reconstructor);
    * for every fitted W: its eigenvalues (``spectrum``) and :func:`~.operators.
      spectrum_summary` / ``involution_error`` in the row.

    Returns (rows, arrays): arrays hold ``{task}/{kind}/W``, ``.../b``, ``.../eig`` and the first
    ``n_examples`` images as uint8 [k, S, S, 3]: ``{task}/source``, ``{task}/target`` and
    ``{task}/recon/{kind}`` for kinds none, true and every operator.
    """
    rows: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    for task, fits in fitted.items():
        src, tgt, title = OPERATOR_TASKS[task]
        fs_all = _normed(test_tokens[src].load(), np.float32)
        ft_all = _normed(test_tokens[tgt].load(), np.float32)
        n = min(len(fs_all), len(ft_all), len(test_images[src]), len(test_images[tgt]))
        fs_all, ft_all = fs_all[:n], ft_all[:n]
        img_s, img_t = test_images[src][:n], test_images[tgt][:n]
        arrays[f"{task}/source"] = to_uint8(img_s[:n_examples])
        arrays[f"{task}/target"] = to_uint8(img_t[:n_examples])
        candidates: dict[str, np.ndarray] = {"none": fs_all, "true": ft_all}
        for kind, (W, b) in fits.items():
            candidates[kind] = ops.apply_map(fs_all, W.astype(np.float32), b.astype(np.float32))
        for kind, feats in candidates.items():
            rec = reconstruct(net, torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)),
                              batch_size)
            mse_t = float(((rec - img_t) ** 2).mean()) / 4.0
            mse_s = float(((rec - img_s) ** 2).mean()) / 4.0
            row = {"task": task, "title": title, "source": src, "target": tgt, "kind": kind,
                   "n_images": n, "r2": _r2(ft_all, feats), "r2_identity": _r2(ft_all, fs_all),
                   "mse_vs_transformed": mse_t, "mse_vs_original": mse_s}
            if kind in fits:
                W, b = fits[kind]
                lam = ops.eigen_spectrum(W)
                arrays[f"{task}/{kind}/W"] = W.astype(np.float32)
                arrays[f"{task}/{kind}/b"] = b.astype(np.float32)
                arrays[f"{task}/{kind}/eig"] = lam
                row.update({f"eig_{k}": v for k, v in ops.spectrum_summary(lam).items()})
                row["involution_error"] = ops.involution_error(W)
            arrays[f"{task}/recon/{kind}"] = to_uint8(rec[:n_examples])
            rows.append(row)
    return rows, arrays
