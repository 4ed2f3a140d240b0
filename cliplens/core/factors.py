"""Which factor of the toy world a component writes, and which one its texts name (studies 001
and 003 check one against the other).

* :func:`variance_shares` -- the held-out R^2 of a component's values explained by each
  labelled factor (what it *writes*);
* :func:`named_factor` -- the factor a weighted list of texts names
  (:func:`~cliplens.core.text.textsets.text_factors` says which factors a text names).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def variance_shares(C_fit: np.ndarray, y_fit: Mapping[str, np.ndarray], C_test: np.ndarray,
                    y_test: Mapping[str, np.ndarray]) -> dict[str, float]:
    """How much of a component's values C [N, D] (a head's direct effect, a neuron's effect)
    each factor accounts for: the held-out R^2 of the linear model ``C ~ one-hot(factor)`` (i.e. predicting each image's direct effect by the mean
    over the fitted images of its factor value) --

        R^2_f = 1 - sum_n |c_n - mu_f(y_n)|^2 / sum_n |c_n - mean(C_fit)|^2   over test images.

    Unlike decoding (study 001's ``probe_factors``), which saturates for any factor that leaves a trace
    in D dimensions (e.g. the background's brightness, visible in every head), this measures
    what the component *writes*: the share of its variation explained by the factor."""
    C_fit = np.asarray(C_fit, dtype=np.float64)
    C_test = np.asarray(C_test, dtype=np.float64)
    mean = C_fit.mean(0)
    sst = float(((C_test - mean) ** 2).sum())
    out = {}
    for factor, y in y_fit.items():
        y, yt = np.asarray(y), np.asarray(y_test[factor])
        mus = {v: C_fit[y == v].mean(0) for v in np.unique(y)}
        pred = np.stack([mus.get(v, mean) for v in yt]) if len(yt) else C_test
        out[factor] = 1.0 - float(((C_test - pred) ** 2).sum()) / sst if sst > 0 else 0.0
    return out


def named_factor(texts: Sequence[str], factors_of, top: int = 5,
                 weights: Sequence[float] | None = None) -> str | None:
    """The factor the first ``top`` texts of a head name, weighted: each text gives its weight
    (default 1; e.g. the share of variance it explains) split equally among the factors it
    names (``factors_of(text)`` -> set of factor names).  Ties go to the factor named earliest,
    then alphabetically; None if no text names one."""
    score: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, t in enumerate(texts[:top]):
        fs = sorted(factors_of(t))
        w = 1.0 if weights is None else float(weights[i])
        for f in fs:
            score[f] = score.get(f, 0.0) + w / len(fs)
            first.setdefault(f, i)
    if not score:
        return None
    return min(score, key=lambda f: (-round(score[f], 12), first[f], f))
