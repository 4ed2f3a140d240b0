"""Sparse autoencoders on embeddings: the published ReLU + L1 model and three field variants.

Every variant maps x [B, d] to latents z [B, m] (m >= d, the dictionary) and back,
``x_hat = decode(z)``, and scores itself with :meth:`SAE.loss` -> (total, named parts).

* :class:`ReluL1` -- as published (Apelsinhik/sae-clip-project): ``z = relu(x W_e^T + b_e)``,
  ``x_hat = z W_d^T + b_d`` (two untied ``nn.Linear`` with biases, torch's default init), loss
  ``mean((x_hat - x)^2) + l1 * mean(|z|)``; no decoder-norm constraint, no dead-latent care.
* :class:`TopK` -- ``z = topk_k(relu(pre))`` (the k largest per row, the rest 0);
* :class:`BatchTopK` -- the ``k B`` largest of the whole batch during training (rows share the
  budget); at inference every ``pre > theta``, theta an exponential moving average of the
  smallest value kept in training batches;
* :class:`JumpReLU` -- ``z = pre * H(pre - theta_j)`` with a learned threshold per latent,
  trained through straight-through estimators of H's derivative (a rectangle of width
  ``bandwidth``) and an L0 penalty ``l0 * mean_b sum_j H(pre_bj - theta_j)``.

The last three share :class:`UnitDecoderSAE`: ``pre = (x - b_pre) W_e + b_e``,
``x_hat = z W_d + b_pre``, the rows of W_d [m, d] kept at unit norm (the gradient's component
along each row is removed before a step and the rows renormalised after it), ``b_pre``
initialised at the data mean (:meth:`UnitDecoderSAE.init_from`), W_e initialised as W_d^T.
TopK and BatchTopK add the dead-latent auxiliary loss: the latents that have not fired for
``dead_after`` samples reconstruct the residual ``x - x_hat`` with their ``k_aux`` largest
pre-activations, ``aux * mean((e_hat - e)^2)``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

#: variant name -> class (filled below)
VARIANTS: dict[str, type["SAE"]] = {}


def _check_sizes(d: int, m: int, k: int | None = None, name: str = "sae") -> None:
    if m < d:
        raise ValueError(f"{name}: dictionary size {m} is below the input width {d}; a sparse "
                         "autoencoder's dictionary is overcomplete (at least the input width)")
    if k is not None and not 1 <= k <= m:
        raise ValueError(f"{name}: k = {k} active latents, but the dictionary has {m}")


class SAE(nn.Module):
    """Base: ``encode`` x [B, d] -> z [B, m], ``decode`` z -> x_hat [B, d], ``loss``."""

    kind = "base"

    def __init__(self, d: int, m: int):
        super().__init__()
        self.d, self.m = int(d), int(m)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_hat, z)."""
        z = self.encode(x)
        return self.decode(z), z

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def after_step(self) -> None:
        """What a variant does after each optimiser step (nothing by default)."""

    def settings(self) -> dict[str, Any]:
        """The constructor's arguments, saved beside the weights."""
        return {"kind": self.kind, "d": self.d, "m": self.m}


class ReluL1(SAE):
    """The published SAE (module docstring)."""

    kind = "relu_l1"

    def __init__(self, d: int, m: int, l1: float = 1e-3):
        _check_sizes(d, m, name=self.kind)
        super().__init__(d, m)
        self.l1 = float(l1)
        self.encoder = nn.Linear(d, m)
        self.decoder = nn.Linear(m, d)

    def encode(self, x):
        return torch.relu(self.encoder(x))

    def decode(self, z):
        return self.decoder(z)

    def loss(self, x):
        x_hat, z = self(x)
        mse = torch.mean((x_hat - x) ** 2)
        l1 = torch.mean(z.abs())
        total = mse + self.l1 * l1
        return total, {"mse": mse.item(), "l1": l1.item(),
                       "l0": (z > 0).float().sum(1).mean().item()}

    def settings(self):
        return {**super().settings(), "l1": self.l1}


class UnitDecoderSAE(SAE):
    """Shared parts of TopK, BatchTopK and JumpReLU (module docstring)."""

    def __init__(self, d: int, m: int, seed: int = 0):
        super().__init__(d, m)
        g = torch.Generator().manual_seed(int(seed))
        w = torch.randn(m, d, generator=g)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.t().clone())
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_pre = nn.Parameter(torch.zeros(d))
        self.seed = int(seed)
        self.W_dec.register_hook(self._parallel_removed)

    def _parallel_removed(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient of W_d without its component along each (unit) row: a step then moves
        rows along the sphere, to first order."""
        w = self.W_dec.detach()
        return grad - (grad * w).sum(1, keepdim=True) * w

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        """b_pre = the mean of a sample of the data x [N, d]."""
        self.b_pre.copy_(x.to(self.b_pre).mean(0))

    @torch.no_grad()
    def after_step(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_pre) @ self.W_enc + self.b_enc

    def decode(self, z):
        return z @ self.W_dec + self.b_pre

    def settings(self):
        return {**super().settings(), "seed": self.seed}


class _DeadLatents(UnitDecoderSAE):
    """TopK and BatchTopK: sample counts since each latent last fired, and the auxiliary loss."""

    def __init__(self, d: int, m: int, k: int, aux: float = 1 / 32, k_aux: int | None = None,
                 dead_after: int = 10_000, seed: int = 0):
        _check_sizes(d, m, k, self.kind)
        super().__init__(d, m, seed)
        self.k, self.aux, self.dead_after = int(k), float(aux), int(dead_after)
        self.k_aux = int(k_aux) if k_aux is not None else min(m, 2 * int(k))
        self.register_buffer("since_fired", torch.zeros(m, dtype=torch.long))

    def _aux_loss(self, x, x_hat, pre, z):
        if self.training:
            with torch.no_grad():
                fired = (z > 0).any(0)
                self.since_fired += x.shape[0]
                self.since_fired[fired] = 0
        dead = self.since_fired >= self.dead_after
        n_dead = int(dead.sum())
        if not self.training or n_dead == 0 or self.aux == 0:
            return x.new_zeros(()), n_dead
        e = (x - x_hat).detach()
        p = torch.relu(pre[:, dead])
        k = min(self.k_aux, n_dead)
        vals, idx = p.topk(k, dim=1)
        e_hat = torch.zeros_like(p).scatter(1, idx, vals) @ self.W_dec[dead]
        return torch.mean((e_hat - e) ** 2), n_dead

    def loss(self, x):
        pre = self.pre(x)
        z = self._activate(pre)
        x_hat = self.decode(z)
        mse = torch.mean((x_hat - x) ** 2)
        aux, n_dead = self._aux_loss(x, x_hat, pre, z)
        total = mse + self.aux * aux
        return total, {"mse": mse.item(), "aux": aux.item(), "dead": n_dead,
                       "l0": (z > 0).float().sum(1).mean().item()}

    def encode(self, x):
        return self._activate(self.pre(x))

    def settings(self):
        return {**super().settings(), "k": self.k, "aux": self.aux, "k_aux": self.k_aux,
                "dead_after": self.dead_after}


class TopK(_DeadLatents):
    """The k largest rectified pre-activations per row (module docstring)."""

    kind = "topk"

    def _activate(self, pre):
        vals, idx = torch.relu(pre).topk(self.k, dim=1)
        return torch.zeros_like(pre).scatter(1, idx, vals)


class BatchTopK(_DeadLatents):
    """The k B largest of a training batch; a threshold at inference (module docstring)."""

    kind = "batchtopk"

    def __init__(self, d: int, m: int, k: int, momentum: float = 0.01, **kw):
        super().__init__(d, m, k, **kw)
        self.momentum = float(momentum)
        self.register_buffer("threshold", torch.tensor(0.0))
        self.register_buffer("threshold_set", torch.tensor(False))

    def _activate(self, pre):
        r = torch.relu(pre)
        if not self.training:
            return torch.where(r > self.threshold, r, torch.zeros_like(r))
        flat = r.flatten()
        vals, idx = flat.topk(min(self.k * r.shape[0], flat.numel()))
        z = torch.zeros_like(flat).scatter(0, idx, vals).view_as(r)
        with torch.no_grad():
            kept = vals[vals > 0]
            if kept.numel():
                low = kept.min()
                if bool(self.threshold_set):
                    self.threshold.lerp_(low, self.momentum)
                else:
                    self.threshold.copy_(low)
                    self.threshold_set.fill_(True)
        return z

    def settings(self):
        return {**super().settings(), "momentum": self.momentum}


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpFn(torch.autograd.Function):
    """``pre * H(pre - theta)``; d/dpre = H(pre - theta), d/dtheta = -(theta / eps) K((pre -
    theta) / eps) (straight-through, K the unit rectangle)."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        gpre = grad * (pre > theta).to(pre.dtype)
        gtheta = -(theta / ctx.eps) * _rectangle((pre - theta) / ctx.eps) * grad
        return gpre, gtheta.sum(0), None


class _StepFn(torch.autograd.Function):
    """``H(pre - theta)``; d/dpre = 0, d/dtheta = -(1 / eps) K((pre - theta) / eps)."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        gtheta = -(1.0 / ctx.eps) * _rectangle((pre - theta) / ctx.eps) * grad
        return None, gtheta.sum(0), None


class JumpReLU(UnitDecoderSAE):
    """A learned threshold per latent and an L0 penalty (module docstring)."""

    kind = "jumprelu"

    def __init__(self, d: int, m: int, l0: float = 1e-3, bandwidth: float = 1e-3,
                 threshold: float = 1e-3, seed: int = 0):
        _check_sizes(d, m, name=self.kind)
        super().__init__(d, m, seed)
        self.l0, self.bandwidth, self.threshold0 = float(l0), float(bandwidth), float(threshold)
        self.log_threshold = nn.Parameter(torch.full((m,), float(threshold)).log())

    def encode(self, x):
        return _JumpFn.apply(self.pre(x), self.log_threshold.exp(), self.bandwidth)

    def loss(self, x):
        pre = self.pre(x)
        theta = self.log_threshold.exp()
        z = _JumpFn.apply(pre, theta, self.bandwidth)
        x_hat = self.decode(z)
        mse = torch.mean((x_hat - x) ** 2)
        l0 = _StepFn.apply(pre, theta, self.bandwidth).sum(1).mean()
        total = mse + self.l0 * l0
        return total, {"mse": mse.item(), "l0": l0.item()}

    def settings(self):
        return {**super().settings(), "l0": self.l0, "bandwidth": self.bandwidth,
                "threshold": self.threshold0}


VARIANTS.update({c.kind: c for c in (ReluL1, TopK, BatchTopK, JumpReLU)})


def build_sae(settings: Mapping[str, Any]) -> SAE:
    """An SAE from its :meth:`SAE.settings` (``kind``, ``d``, ``m`` and the variant's own);
    ValueError naming an unknown kind or a bad size."""
    s = dict(settings)
    kind = s.pop("kind", None)
    if kind not in VARIANTS:
        raise ValueError(f"unknown SAE kind {kind!r}; known: {sorted(VARIANTS)}")
    return VARIANTS[kind](**s)
