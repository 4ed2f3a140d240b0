"""Statistics every study reports: confidence intervals and streaming moments.

* :func:`mean_ci` -- a mean with its two-sided Student-t confidence interval.
* :class:`StreamingMoments` -- mean and covariance of rows seen in chunks (float64), so a
  dataset larger than memory is summarised in one pass and O(d^2) memory.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean and two-sided Student-t confidence interval: mean +- t_{(1+level)/2, n-1} s / sqrt(n)
    (s the sample standard deviation).  Returns ``n, mean, sd, ci_low, ci_high``; n < 2 gives
    NaN bounds."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "sd": float("nan"), "ci_low": float("nan"),
                "ci_high": float("nan")}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


class StreamingMoments:
    """Running ``n``, ``sum x`` [d] and ``sum x x^T`` [d, d] of rows ``x`` in R^d, in float64
    (torch, on the device of the first chunk).

    ``mean = s1 / n`` and the unbiased covariance ``(s2 - n mean mean^T) / (n - 1)``.  The result
    does not depend on how the rows are cut into chunks beyond floating-point summation order.
    """

    def __init__(self) -> None:
        self.n = 0
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None

    def update(self, x: torch.Tensor | np.ndarray) -> "StreamingMoments":
        """Add the rows of ``x`` [m, d] (any float dtype; accumulated in float64)."""
        x = torch.as_tensor(x)
        x = x.double().reshape(-1, x.shape[-1])
        if self.s1 is None:
            self.s1, self.s2 = x.sum(0), x.T @ x
        else:
            if x.shape[1] != self.s1.shape[0]:
                raise ValueError(f"rows of width {x.shape[1]}, expected {self.s1.shape[0]}")
            self.s1, self.s2 = self.s1 + x.sum(0), self.s2 + x.T @ x
        self.n += len(x)
        return self

    @property
    def mean(self) -> torch.Tensor:
        if not self.n:
            raise ValueError("no rows seen")
        return self.s1 / self.n

    @property
    def cov(self) -> torch.Tensor:
        """Unbiased covariance [d, d] (needs at least two rows)."""
        if self.n < 2:
            raise ValueError("need at least two rows for a covariance")
        mu = self.mean
        return (self.s2 - self.n * torch.outer(mu, mu)) / (self.n - 1)
