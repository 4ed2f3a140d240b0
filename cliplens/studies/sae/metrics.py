"""What an SAE is scored by, over the rows of a cache in blocks (one pass).

For rows x_i [N, d], reconstructions x_hat_i and latents z_i [N, m]:

* ``l0``  = mean_i #{j : z_ij > 0}            (active latents per sample, as published: L0)
* ``mse`` = mean_{i,k} (x_hat_ik - x_ik)^2     (per element, the published MSE)
* ``l1``  = mean_{i,j} |z_ij|                  (per element, the published L1)
* ``r2``  = 1 - sum_i |x_hat_i - x_i|^2 / sum_i |x_i - mean(x)|^2   (explained variance)
* ``dead``  = share of latents that never fire on these rows;
* ``dense`` = share of latents that fire on more than ``dense_above`` of them;
* ``firing`` [m] = each latent's firing rate (kept for the per-feature table).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from .variants import SAE


@torch.no_grad()
def sae_metrics(sae: SAE, blocks: Iterable[np.ndarray], dense_above: float = 0.1,
                device: str = "cpu") -> dict:
    """The metrics of the module docstring over ``blocks`` of rows [b, d] (one pass, float64
    sums); ``sae`` is put in eval mode (BatchTopK then uses its threshold)."""
    sae.eval()
    n = 0
    s_xx = s_err = s_l1 = s_l0 = 0.0
    s_vec = None
    fired = None
    for x in blocks:
        xt = torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)
        x_hat, z = sae(xt)
        x64, e = xt.double(), (x_hat - xt).double()
        n += len(xt)
        s_vec = x64.sum(0) if s_vec is None else s_vec + x64.sum(0)
        s_xx += float((x64 ** 2).sum())
        s_err += float((e ** 2).sum())
        s_l1 += float(z.abs().double().sum())
        active = z > 0
        s_l0 += float(active.sum())
        f = active.sum(0).double()
        fired = f if fired is None else fired + f
    if n == 0:
        raise ValueError("no rows to score the SAE on")
    d, m = sae.d, sae.m
    sst = s_xx - float((s_vec ** 2).sum()) / n
    rate = (fired / n).cpu().numpy()
    return {"n": n, "l0": s_l0 / n, "mse": s_err / (n * d), "l1": s_l1 / (n * m),
            "r2": 1.0 - s_err / sst if sst > 0 else float("nan"),
            "dead": float((rate == 0).mean()), "dense": float((rate > dense_above).mean()),
            "firing": rate}


@torch.no_grad()
def reconstructed(sae: SAE, x: np.ndarray, device: str = "cpu") -> np.ndarray:
    """CLIP+SAE: each row replaced by its reconstruction, renormalised to unit norm [N, d]
    (then classified with the same zero-shot classifier as the embeddings)."""
    sae.eval()
    xh, _ = sae(torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device))
    xh = xh.double()
    return (xh / xh.norm(dim=1, keepdim=True).clamp_min(1e-12)).cpu().numpy()
