"""Study 000: reconstructing images from patch tokens (feature inversion).

Shapes: ``B`` images, ``P = gh * gw`` patch tokens of width ``D``, images ``[B, 3, S, S]`` with
``S`` the extractor's native input side.

* :class:`Reconstructor` -- tokens [B, P, D] -> image [B, 3, S, S] in [-1, 1] (approximately):
  each token L2-normalised (as published) and whitened with training statistics (an invertible
  affine map: same function class, far faster optimisation), a linear map to the model width,
  learned position embeddings, a pre-LayerNorm transformer, the grid reshaped to
  [B, width, gh, gw], then log2(S / gh) transposed-convolution x2 upsampling stages each followed
  by residual blocks, and a 3x3 convolution to RGB.
* :func:`train_reconstructor` -- minimises MSE(reconstruction, image scaled to [-1, 1]) with Adam,
  linear warm-up then cosine decay ("one cycle"), with atomic resumable checkpoints (model,
  optimiser, scheduler, RNG, step) and periodic sample grids.  Batches are a pure function of
  (seed, step), so a job killed and resumed from its last checkpoint ends with the very weights
  an uninterrupted run reaches.
* :func:`similarity_rows` / :func:`summarise_similarity` -- cosine similarity of scorer
  embeddings of original and reconstruction (grayscale as the published study, or colour), per
  image, with means and 95 % t confidence intervals.
* :func:`fit_colour_operators` / :func:`evaluate_colour_operators` -- the colour operators of
  :mod:`cliplens.operators` fitted on token pairs and judged in feature space (R^2) and in image
  space (reconstructions from operated features against the truly transformed images).
* Figures: :func:`plot_v1_vs_v2`, :func:`plot_reconstructions`, :func:`plot_operator_figure`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from . import operators as ops
from .io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

#: files of a trained reconstructor
WEIGHTS_FILE = "reconstructor.safetensors"
META_FILE = "reconstructor.json"
CHECKPOINT_FILE = "last.pt"


# ---------------------------------------------------------------------------------------------
# the reconstructor


def upsampling_stages(image_size: int, grid: int) -> int:
    """log2(image_size / grid): the number of x2 stages from the token grid to the image."""
    if grid < 1 or image_size % grid:
        raise ValueError(f"image size {image_size} is not a multiple of the grid side {grid}")
    scale = image_size // grid
    stages = int(round(math.log2(scale)))
    if 2 ** stages != scale:
        raise ValueError(f"image size / grid = {scale} is not a power of two; the reconstructor "
                         "upsamples by x2 stages")
    return stages


class ResBlock(nn.Module):
    """x + conv3x3(SiLU(conv3x3(SiLU(x)))) at constant width."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class UpStage(nn.Module):
    """ConvTranspose2d(c_in, c_out, 4, stride 2, padding 1) (exactly x2), then residual blocks."""

    def __init__(self, c_in: int, c_out: int, res_blocks: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(c_out) for _ in range(res_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(F.silu(self.up(x)))


class Reconstructor(nn.Module):
    """Patch tokens [B, P, D] -> image [B, 3, S, S] (target range [-1, 1]).

    ``grid`` (gh, gw) with P = gh * gw and S = gh * 2^k = gw * 2^k; k = log2(S / gh) upsampling
    stages use the *last* k entries of ``channels`` (so one config serves several patch sizes;
    the published model: width 768, depth 4, heads 12, channels 384, 192, 96, 48 for patch 16).

    Forward: x = normalize(t) (``normalize_tokens``); z = (x - mu) W (whitening buffers, the
    identity until :meth:`fit_token_stats`); h = Transformer(z A^T + a + pos) (no final
    LayerNorm: it slowed fitting on the toy world); grid [B, width, gh, gw]; per stage
    h = ResBlocks(SiLU(ConvTranspose(h))); image = Conv3x3(SiLU(h)).
    """

    def __init__(
        self,
        token_dim: int,
        grid: Sequence[int],
        image_size: int,
        *,
        width: int = 768,
        depth: int = 4,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        channels: Sequence[int] = (384, 192, 96, 48),
        res_blocks: int = 1,
        normalize_tokens: bool = True,
        whiten_tokens: bool = True,
        whiten_eps: float = 1e-4,
    ):
        super().__init__()
        gh, gw = (int(grid[0]), int(grid[1]))
        stages = upsampling_stages(image_size, gh)
        if upsampling_stages(image_size, gw) != stages:
            raise ValueError(f"grid {gh}x{gw} does not scale to a square {image_size} image")
        if len(channels) < stages:
            raise ValueError(f"{stages} upsampling stages (image {image_size}, grid {gh}) need "
                             f"{stages} channel widths, config gives {list(channels)}")
        if width % heads:
            raise ValueError(f"heads {heads} does not divide width {width}")
        self.config = {
            "token_dim": int(token_dim), "grid": [gh, gw], "image_size": int(image_size),
            "width": int(width), "depth": int(depth), "heads": int(heads),
            "mlp_ratio": float(mlp_ratio), "channels": [int(c) for c in channels],
            "res_blocks": int(res_blocks), "normalize_tokens": bool(normalize_tokens),
            "whiten_tokens": bool(whiten_tokens), "whiten_eps": float(whiten_eps),
        }
        self.grid, self.image_size = (gh, gw), int(image_size)
        self.normalize_tokens, self.whiten_tokens = normalize_tokens, whiten_tokens
        self.whiten_eps = float(whiten_eps)
        # input whitening fitted on training tokens (fit_token_stats); the identity until then
        self.register_buffer("token_mean", torch.zeros(token_dim))
        self.register_buffer("token_whiten", torch.eye(token_dim))
        self.proj = nn.Linear(token_dim, width)
        self.pos = nn.Parameter(torch.randn(1, gh * gw, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, int(round(width * mlp_ratio)),
                                           dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        chans = list(channels)[len(channels) - stages:] if stages else []
        c, ups = width, []
        for co in chans:
            ups.append(UpStage(c, int(co), res_blocks))
            c = int(co)
        self.up = nn.Sequential(*ups)
        self.to_rgb = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, p, _ = tokens.shape
        gh, gw = self.grid
        if p != gh * gw:
            raise ValueError(f"got {p} tokens, the reconstructor expects {gh}x{gw}")
        x = F.normalize(tokens, dim=-1) if self.normalize_tokens else tokens
        x = self.proj((x - self.token_mean) @ self.token_whiten) + self.pos
        x = self.encoder(x)  # no final LayerNorm: token scale carries signal (faster to fit)
        x = x.transpose(1, 2).reshape(b, -1, gh, gw)
        return self.to_rgb(F.silu(self.up(x)))


    @torch.no_grad()
    def fit_token_stats(self, batches: Iterable[torch.Tensor] | torch.Tensor) -> None:
        """Fit the input whitening on sample tokens (a tensor [N, P, D] or an iterable of them,
        accumulated in float64; L2-normalised first if ``normalize_tokens``): with mean mu and
        covariance C = U diag(lambda) U^T of the tokens, the first layer sees z = (x - mu) W with
        the ZCA whitening W = U diag((lambda + eps * lambda_max)^(-1/2)) U^T.

        W is invertible, so proj(z) = x (W A^T) + c spans exactly the affine maps proj(x) can:
        the reconstructor's function class is unchanged, only its optimisation is conditioned.
        That matters: toy and real tokens share one dominant direction (lambda_max / lambda_min
        ~ 1e6 on the toy world), and Adam on raw tokens needs orders of magnitude more steps to
        reach what it reaches in a few hundred on whitened ones.  A no-op unless
        ``whiten_tokens``."""
        if not self.whiten_tokens:
            return
        if isinstance(batches, torch.Tensor):
            batches = [batches]
        n, s1, s2 = 0, None, None
        for tok in batches:
            x = tok.to(self.token_mean.device).double().reshape(-1, tok.shape[-1])
            if self.normalize_tokens:
                x = F.normalize(x, dim=-1)
            s1 = x.sum(0) if s1 is None else s1 + x.sum(0)
            s2 = x.T @ x if s2 is None else s2 + x.T @ x
            n += len(x)
        if n < 2:
            raise ValueError("need at least two tokens to fit the whitening")
        mu = s1 / n
        cov = (s2 - n * torch.outer(mu, mu)) / (n - 1)
        lam, U = torch.linalg.eigh(cov)
        lam = lam.clamp_min(0) + self.whiten_eps * lam.max().clamp_min(1e-12)
        self.token_mean.copy_(mu.float())
        self.token_whiten.copy_(((U * lam.rsqrt()) @ U.T).float())


def build_reconstructor(token_dim: int, grid: Sequence[int], image_size: int,
                        cfg: Mapping[str, Any], seed: int = 0) -> Reconstructor:
    """A :class:`Reconstructor` from the ``inversion.reconstructor`` config slice, initialised
    from ``seed`` (the global torch RNG is restored afterwards)."""
    keys = ("width", "depth", "heads", "mlp_ratio", "channels", "res_blocks", "normalize_tokens",
            "whiten_tokens", "whiten_eps")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return Reconstructor(token_dim, grid, image_size, **{k: cfg[k] for k in keys if k in cfg})


# ---------------------------------------------------------------------------------------------
# training data


class TargetTransform:
    """PIL images -> [B, 3, S, S] in [-1, 1]: the extractor's own preprocessing (resize, crop) with
    its normalisation undone, x01 = x * std + mean, then 2 * x01 - 1.  For SigLIP (mean = std =
    0.5) this is exactly the extractor's input.  :meth:`pixels_and_targets` returns the
    extractor's input as well (one preprocessing pass for both)."""

    def __init__(self, model):
        pre = model.provenance().get("preprocess", {})
        self.mean = torch.tensor(pre.get("mean") or [0.0] * 3).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.get("std") or [1.0] * 3).view(1, 3, 1, 1)
        self.preprocess = model.preprocess

    def pixels_and_targets(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.preprocess(list(images))
        return x, (x.float() * self.std + self.mean) * 2.0 - 1.0

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.pixels_and_targets(images)[1]


def target_transform(model) -> TargetTransform:
    """:class:`TargetTransform` of ``model``."""
    return TargetTransform(model)


class PairSource(torch.utils.data.Dataset):
    """(tokens, target image) pairs: row ``i`` of a token cache and image ``i`` of the dataset it
    was extracted from.  ``self[rows]`` returns a whole batch: tokens float32 [B, P, D] and
    targets [B, 3, S, S].  ``tokens`` is an in-memory array [n, P, D] or a path to a token cache
    (opened lazily in each process, so DataLoader workers can read it).

    Online mode (``tokens=None``, ``targets`` a :class:`TargetTransform` and ``encode`` the
    extractor's pixels -> tokens map): ``self[rows]`` returns the extractor's *pixels* instead
    of tokens, and the training loop encodes them (:func:`train_reconstructor`'s ``encode``), so
    no token cache is written; ``tokens(rows)`` encodes on demand (for statistics)."""

    def __init__(self, tokens: np.ndarray | str | os.PathLike | None, dataset,
                 targets: Callable[[Sequence[Image.Image]], torch.Tensor],
                 n: int | None = None, encode: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self._tokens = tokens
        self._cache = None
        self._pid = None
        self.dataset, self.targets, self.encode = dataset, targets, encode
        if tokens is None:
            if encode is None or not hasattr(targets, "pixels_and_targets"):
                raise ValueError("online mode needs encode and a TargetTransform")
            size = len(dataset)
        else:
            size = len(tokens) if isinstance(tokens, np.ndarray) else len(self._open())
        self.n = min(size, len(dataset)) if n is None else int(n)

    @property
    def online(self) -> bool:
        return self._tokens is None

    def _open(self):
        from .tokens import open_tokens

        if self._cache is None or self._pid != os.getpid():
            self._cache, self._pid = open_tokens(self._tokens), os.getpid()
        return self._cache

    def __len__(self) -> int:
        return self.n

    def tokens(self, rows: Sequence[int], batch_size: int = 64) -> torch.Tensor:
        rows = np.asarray(rows, dtype=np.int64)
        if self.online:
            out = []
            for a in range(0, len(rows), batch_size):
                px, _ = self.targets.pixels_and_targets(
                    [self.dataset.image(int(r)) for r in rows[a:a + batch_size]])
                with torch.no_grad():
                    out.append(self.encode(px).float().cpu())
            return torch.cat(out)
        if isinstance(self._tokens, np.ndarray):
            return torch.from_numpy(self._tokens[rows].astype(np.float32))
        return torch.from_numpy(self._open().read(rows))

    def __getitem__(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [int(r) for r in rows]
        images = [self.dataset.image(r) for r in rows]
        if self.online:
            return self.targets.pixels_and_targets(images)
        return self.tokens(rows), self.targets(images)


class BatchPlan:
    """Row indices of every step: epoch ``e`` visits ``randperm(n)`` drawn from a generator
    seeded with ``seed * 1_000_003 + e``; step ``s`` takes batch ``s mod (n // B)`` of epoch
    ``s // (n // B)`` (the incomplete last batch of an epoch is dropped).  A pure function of
    (n, B, seed, step): a resumed run draws exactly the batches of an uninterrupted one."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < 1:
            raise ValueError("no training pairs")
        self.n, self.bs, self.seed = n, min(int(batch_size), n), int(seed)
        self.per_epoch = self.n // self.bs
        self._epoch, self._perm = None, None

    def rows(self, step: int) -> list[int]:
        epoch, k = divmod(int(step), self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm[k * self.bs:(k + 1) * self.bs].tolist()

    def steps(self, start: int, stop: int) -> Iterable[list[int]]:
        for s in range(start, stop):
            yield self.rows(s)


def lr_factor(step: int, steps: int, warmup_steps: int, min_factor: float = 0.0) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up (step + 1) / warmup_steps, then cosine
    decay from 1 to ``min_factor`` at the last step (the one-cycle schedule of the published
    VQ-VAE-style trainer, with the cosine tail)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(steps - warmup_steps, 1)
    t = min((step - warmup_steps) / span, 1.0)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


# ---------------------------------------------------------------------------------------------
# checkpoints


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (what a checkpoint must match to be resumed)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """``torch.save(state)`` under a temporary name, fsync, rename: never a half-written file."""
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (``torch.load(weights_only=True)``: tensors and plain
    containers only), or None if there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _rng_state() -> dict[str, Any]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_grid(path: Path, targets: torch.Tensor, recon: torch.Tensor) -> None:
    """PNG: targets (top row) above reconstructions (bottom row), both mapped from [-1, 1]."""
    from torchvision.utils import make_grid

    x = torch.cat([targets, recon.clamp(-1, 1)]).float().cpu()
    grid = make_grid((x + 1) / 2, nrow=len(targets), padding=2, pad_value=1.0)
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


# ---------------------------------------------------------------------------------------------
# training


def train_reconstructor(
    net: Reconstructor,
    source: PairSource,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: float = 0.05,
    min_lr_factor: float = 0.0,
    weight_decay: float = 0.0,
    grad_clip: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    amp: bool = False,
    workers: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    sample: tuple[torch.Tensor, torch.Tensor] | None = None,
    sample_every: int = 0,
    fingerprint_data: Any = None,
    stats_images: int = 1024,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train ``net`` in place on ``source``; return the training record.

    Loss: mean squared error between ``net(tokens)`` and the target image in [-1, 1].  Adam
    (``weight_decay`` > 0: AdamW) at peak ``lr`` with :func:`lr_factor` (``warmup`` = fraction of
    ``steps``), batches from :class:`BatchPlan` (``seed``).  Every ``checkpoint_every`` steps and
    at the end, ``{checkpoint_dir}/last.pt`` is replaced atomically by the model, optimiser and
    scheduler states, the RNG state, the step, the loss history and a fingerprint of
    ``fingerprint_data`` (with the architecture and hyper-parameters); on start, a checkpoint
    with the same fingerprint is resumed (a different one is ignored, with a warning).  Every
    ``sample_every`` steps the held-out ``sample`` (tokens, targets) is reconstructed: its loss
    goes to the record and a grid to ``{checkpoint_dir}/samples/step_NNNNNN.png``.
    ``on_step(step)`` is called after each completed step (tests use it to kill the job).
    ``amp`` runs the forward pass in bfloat16 autocast on CUDA.  Before the first step the
    input whitening is fitted on the tokens of ``stats_images`` evenly spaced training images
    (:meth:`Reconstructor.fit_token_stats`).  An online ``source`` (:class:`PairSource` without
    a token cache) yields pixels, encoded here by ``source.encode``.

    Returns ``{steps, resumed_from, final_loss (mean of the last min(20, steps) steps),
    history [[step, loss]], val_history [[step, loss]], seconds, fingerprint}``.
    """
    device = torch.device(device)
    steps = int(steps)
    warmup_steps = int(round(float(warmup) * steps))
    hyper = {"steps": steps, "batch_size": int(batch_size), "lr": float(lr),
             "warmup_steps": warmup_steps, "min_lr_factor": float(min_lr_factor),
             "weight_decay": float(weight_decay), "grad_clip": float(grad_clip),
             "seed": int(seed), "n": len(source), "amp": bool(amp)}
    fp = fingerprint({"net": net.config, "train": hyper, "data": fingerprint_data})
    net.to(device).train()
    opt_cls = torch.optim.AdamW if weight_decay > 0 else torch.optim.Adam
    opt = opt_cls(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, steps, warmup_steps, min_lr_factor))
    plan = BatchPlan(len(source), batch_size, seed)
    history: list[list[float]] = []
    val_history: list[list[float]] = []
    start, resumed = 0, None
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir else None
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt is not None and ckpt.get("fingerprint") == fp:
            net.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            _set_rng_state(ckpt["rng"])
            start = resumed = int(ckpt["step"])
            history = [list(map(float, h)) for h in ckpt["history"]]
            val_history = [list(map(float, h)) for h in ckpt["val_history"]]
            log.info("resuming from %s at step %d of %d", ckpt_path, start, steps)
        elif ckpt is not None:
            log.warning("ignoring checkpoint %s: it belongs to another configuration or data",
                        ckpt_path)

    if resumed is None:
        rows = np.unique(np.linspace(0, len(source) - 1, min(len(source), stats_images)).round()
                         .astype(int))
        net.fit_token_stats(source.tokens(rows[a:a + 64]) for a in range(0, len(rows), 64))

    def checkpoint(step: int) -> None:
        if ckpt_path is None:
            return
        save_checkpoint(ckpt_path, {
            "model": net.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": _rng_state(), "step": step,
            "history": history, "val_history": val_history, "fingerprint": fp,
        })

    def sample_pass(step: int) -> None:
        if sample is None:
            return
        net.eval()
        with torch.no_grad():
            tok, tgt = sample
            rec = net(tok.to(device)).float().cpu()
        net.train()
        val_history.append([float(step), float(F.mse_loss(rec, tgt))])
        if checkpoint_dir:
            _save_grid(Path(checkpoint_dir) / "samples" / f"step_{step:06d}.png", tgt, rec)

    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(
        source, batch_size=None, sampler=plan.steps(start, steps), num_workers=int(workers),
        pin_memory=device.type == "cuda", persistent_workers=False,
    ) if workers > 0 else (source[rows] for rows in plan.steps(start, steps))
    every = max(1, steps // 50)
    window: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=start, desc="train reconstructor", disable=not progress,
               mininterval=2.0)
    step = start
    encode = source.encode if getattr(source, "online", False) else None
    for tok, tgt in loader:
        tok, tgt = tok.to(device, non_blocking=True), tgt.to(device, non_blocking=True)
        if encode is not None:  # online mode: the batch holds the extractor's pixels
            with torch.no_grad():
                tok = encode(tok).float()
        use_amp = amp and device.type == "cuda"
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = net(tok)
        loss = F.mse_loss(out.float(), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        opt.step()
        sched.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"reconstructor loss became {value} at step {step}; lower "
                                     "inversion.train.lr")
        window.append(value)
        step += 1
        if step % every == 0 or step == steps:
            history.append([float(step), float(np.mean(window))])
            window = []
            bar.set_postfix(loss=f"{history[-1][1]:.4f}")
        bar.update(1)
        if sample_every and (step % sample_every == 0 or step == steps):
            sample_pass(step)
        if checkpoint_every and step % checkpoint_every == 0 and step != steps:
            checkpoint(step)
        if on_step is not None:
            on_step(step)
    bar.close()
    if start < steps or not history:
        checkpoint(steps)
    net.eval()
    tail = [h[1] for h in history[-max(1, min(20, len(history))):]]
    final = float(np.mean(tail)) if tail else float("nan")
    return {"steps": steps, "resumed_from": resumed, "final_loss": final,
            "history": history, "val_history": val_history,
            "seconds": round(time.perf_counter() - t0, 3), "fingerprint": fp}


# ---------------------------------------------------------------------------------------------
# saving, loading, reconstructing


def save_reconstructor(net: Reconstructor, meta: Mapping[str, Any], out_dir: str | os.PathLike
                       ) -> None:
    """``{out_dir}/reconstructor.safetensors`` (weights) and ``reconstructor.json`` (config and
    training record; written last)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    write_json_atomic(out_dir / META_FILE, {**meta, "config": net.config})


def load_reconstructor(out_dir: str | os.PathLike, device: str | torch.device = "cpu"
                       ) -> tuple[Reconstructor, dict[str, Any]]:
    """(reconstructor in eval mode, metadata) saved by :func:`save_reconstructor`."""
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    meta = json.loads((out_dir / META_FILE).read_text())
    cfg = dict(meta["config"])
    net = Reconstructor(cfg.pop("token_dim"), cfg.pop("grid"), cfg.pop("image_size"), **cfg)
    net.load_state_dict(load_file(str(out_dir / WEIGHTS_FILE)))
    return net.to(device).eval(), meta


@torch.no_grad()
def reconstruct(net: Reconstructor, tokens: torch.Tensor | np.ndarray, batch_size: int = 64
                ) -> torch.Tensor:
    """Reconstructions [N, 3, S, S] (float32, CPU, clamped to [-1, 1]) of tokens [N, P, D]."""
    net.eval()
    device = next(net.parameters()).device
    tokens = torch.as_tensor(tokens)
    out = [net(tokens[a:a + batch_size].to(device).float()).float().clamp(-1, 1).cpu()
           for a in range(0, len(tokens), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 3, net.image_size, net.image_size)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, S, S] in [-1, 1] -> uint8 [N, S, S, 3]."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round()
    return x.permute(0, 2, 3, 1).to(torch.uint8).numpy()


def extractor_group(spec: str, family: str | None = None,
                    groups: Mapping[str, str] | None = None) -> str:
    """Label of an extractor in the comparison: ``groups[spec]`` if given, else ``SigLIP2`` when
    the spec names siglip2 (``hf:google/siglip2-base-patch16-512`` is a ``SiglipModel`` whose
    family reads ``siglip``), ``SigLIP`` for other SigLIPs, else the family or spec."""
    if groups and spec in groups:
        return str(groups[spec])
    low = spec.lower()
    if "siglip2" in low or family == "siglip2":
        return "SigLIP2"
    if "siglip" in low or family == "siglip":
        return "SigLIP"
    return family or spec


# ---------------------------------------------------------------------------------------------
# similarity


def square(image: Image.Image, size: int) -> Image.Image:
    """Squash-resize to ``size`` x ``size`` (bicubic), as SigLIP's preprocessing does."""
    image = image.convert("RGB")
    return image if image.size == (size, size) else image.resize((size, size), Image.BICUBIC)


def variant_image(image: Image.Image, variant: str, size: int) -> Image.Image:
    """The image a scorer sees: squashed to its input ``size``; ``grayscale``: then converted to
    luma (PIL's ITU-R 601 ``L``) and back to three equal channels, as the published metric does;
    ``colour``: unchanged."""
    img = square(image, size)
    if variant == "grayscale":
        return img.convert("L").convert("RGB")
    if variant == "colour":
        return img
    raise ValueError(f"unknown similarity variant {variant!r} (grayscale, colour)")


@torch.no_grad()
def embed_images(scorer, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
    """L2-normalised scorer embeddings [N, E] of PIL images (scorer's own preprocessing)."""
    out = []
    for a in range(0, len(images), batch_size):
        px = scorer.preprocess(list(images[a:a + batch_size]))
        out.append(scorer.encode_image(px.to(scorer.device), normalize=True).float().cpu())
    return torch.cat(out) if out else torch.empty(0, scorer.embed_dim)


def similarity_rows(
    scorer,
    originals: Sequence[Image.Image],
    reconstructions: Mapping[str, Sequence[Image.Image]],
    *,
    variants: Sequence[str] = ("grayscale", "colour"),
    index: Sequence[int] | None = None,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Per-image cosine similarities cos(e(o_i), e(r_i)) of scorer embeddings e (L2-normalised)
    of original o_i and reconstruction r_i, both squashed to the scorer's input size (and made
    grayscale for that variant).  ``reconstructions``: extractor spec -> images aligned with
    ``originals``.  Rows: scorer, variant, extractor, image (dataset index), cosine."""
    size = int(scorer.image_size)
    index = list(range(len(originals))) if index is None else list(index)
    rows = []
    for variant in variants:
        ref = embed_images(scorer, [variant_image(o, variant, size) for o in originals], batch_size)
        for spec, recs in reconstructions.items():
            if len(recs) != len(originals):
                raise ValueError(f"{spec}: {len(recs)} reconstructions for {len(originals)} images")
            emb = embed_images(scorer, [variant_image(r, variant, size) for r in recs], batch_size)
            cos = (ref * emb).sum(-1).numpy()
            rows += [{"scorer": scorer.spec, "variant": variant, "extractor": spec,
                      "image": int(i), "cosine": float(c)} for i, c in zip(index, cos)]
    return rows


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean and two-sided Student-t confidence interval: mean +- t_{(1+level)/2, n-1} s / sqrt(n)
    (s the sample standard deviation).  n < 2 gives NaN bounds."""
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


def summarise_similarity(per_image, extractors: Mapping[str, Mapping[str, Any]]):
    """(summary, differences) DataFrames from per-image rows (:func:`similarity_rows`).

    ``extractors``: spec -> {"group", "resolution"}.  Summary: one row per (scorer, variant,
    extractor) with group, resolution, n, mean, sd, ci_low, ci_high (95 % t interval, column
    ``ci_method``).  Differences: for each (scorer, variant, resolution) where exactly one
    extractor of each of the first two groups (in ``extractors`` order) exists, the paired
    per-image difference second - first (e.g. SigLIP2 - SigLIP) with its 95 % t interval.
    """
    import pandas as pd

    df = pd.DataFrame(per_image)
    rows = []
    for (scorer, variant, spec), g in df.groupby(["scorer", "variant", "extractor"], sort=False):
        info = extractors[spec]
        rows.append({"scorer": scorer, "variant": variant, "extractor": spec,
                     "group": info["group"], "resolution": int(info["resolution"]),
                     **mean_ci(g["cosine"]), "ci_method": "t, 95%"})
    summary = pd.DataFrame(rows)
    groups = list(dict.fromkeys(v["group"] for v in extractors.values()))
    diffs = []
    if len(groups) >= 2:
        a, b = groups[0], groups[1]
        for (scorer, variant), g in df.groupby(["scorer", "variant"], sort=False):
            by_res: dict[int, dict[str, str]] = {}
            for spec, info in extractors.items():
                by_res.setdefault(int(info["resolution"]), {}).setdefault(info["group"], [])
                by_res[int(info["resolution"])][info["group"]].append(spec)
            for res, members in sorted(by_res.items()):
                if len(members.get(a, [])) != 1 or len(members.get(b, [])) != 1:
                    continue
                xa = g[g.extractor == members[a][0]].set_index("image")["cosine"]
                xb = g[g.extractor == members[b][0]].set_index("image")["cosine"]
                common = xa.index.intersection(xb.index)
                d = (xb[common] - xa[common]).to_numpy()
                diffs.append({"scorer": scorer, "variant": variant, "resolution": res,
                              "first": members[a][0], "second": members[b][0],
                              "comparison": f"{b} - {a}", **mean_ci(d),
                              "second_better_share": float(np.mean(d > 0)) if len(d) else np.nan,
                              "ci_method": "paired t, 95%"})
    return summary, pd.DataFrame(diffs)


# ---------------------------------------------------------------------------------------------
# colour operators

OPERATOR_TASKS = ops.OPERATOR_TASKS


def _normed(x: np.ndarray, dtype=np.float64) -> np.ndarray:
    x = np.asarray(x, dtype=dtype)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pair_stats(source, target, rows: int | None = None, chunk: int = 32,
               normalize: bool = True) -> ops.PairStats:
    """:class:`~cliplens.operators.PairStats` of token pairs from two aligned token caches
    (:class:`~cliplens.tokens.TokenCache`): every token of image i in ``source`` paired with the
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
    (:data:`cliplens.operators.OPERATOR_KINDS`).  Returns task -> kind -> (W, b)."""
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

    * ``r2``: R^2 of f_s W + b against f_t (:class:`cliplens.operators.R2`), and ``r2_identity``
      of f_s itself (no operator) for reference;
    * ``mse_vs_transformed`` / ``mse_vs_original``: pixel MSE (images in [0, 1]) of the
      reconstruction from f_s W + b against the truly transformed image t and the untransformed
      image s; for reference the rows ``kind = none`` (reconstruction from f_s) and
      ``kind = true`` (reconstruction from f_t, the best an operator can do through this
      reconstructor);
    * for every fitted W: its eigenvalues (``spectrum``) and :func:`~cliplens.operators.
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


# ---------------------------------------------------------------------------------------------
# figures


def _save_fig(fig, out_path: str | os.PathLike, dpi: int = 130) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_v1_vs_v2(summary, out_path: str | os.PathLike, *, title: str | None = None) -> None:
    """Similarity against input resolution, one line per (group, variant), one panel per scorer,
    error bars = 95 % t confidence intervals.  Groups get colours; colour-variant lines are solid
    with filled markers, grayscale ones dashed with open markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scorers = list(dict.fromkeys(summary["scorer"]))
    groups = list(dict.fromkeys(summary["group"]))
    variants = list(dict.fromkeys(summary["variant"]))
    palette = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange"]
    res_all = sorted(set(int(r) for r in summary["resolution"]))
    fig, axes = plt.subplots(1, len(scorers), figsize=(5.2 * len(scorers), 4.2), squeeze=False,
                             sharey=False)
    n_txt = sorted(set(int(n) for n in summary["n"]))
    for ax, scorer in zip(axes[0], scorers):
        sub = summary[summary.scorer == scorer]
        for gi, group in enumerate(groups):
            for vi, variant in enumerate(variants):
                d = sub[(sub.group == group) & (sub.variant == variant)].sort_values("resolution")
                if d.empty:
                    continue
                pos = np.array([res_all.index(int(r)) for r in d.resolution], dtype=float)
                pos += (gi - (len(groups) - 1) / 2) * 0.06 + (vi - (len(variants) - 1) / 2) * 0.02
                err = np.vstack([d["mean"] - d["ci_low"], d["ci_high"] - d["mean"]])
                gray = variant == "grayscale"
                ax.errorbar(pos, d["mean"], yerr=err, color=palette[gi % len(palette)],
                            linestyle="--" if gray else "-", marker="o", capsize=3,
                            markerfacecolor="white" if gray else palette[gi % len(palette)],
                            label=f"{group}, {variant}")
        ax.set_xticks(range(len(res_all)))
        ax.set_xticklabels([f"{r}px" for r in res_all])
        ax.set_xlabel("extractor input resolution")
        ax.set_ylabel("cosine similarity (original vs reconstruction)")
        ax.set_title(f"scorer: {scorer}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title or (
        "Reconstruction from patch tokens: SigLIP vs SigLIP2\n"
        f"mean cosine similarity of scorer embeddings over n = {', '.join(map(str, n_txt))} "
        "held-out images, error bars: 95 % t-CI"), fontsize=11)
    fig.tight_layout()
    _save_fig(fig, out_path)


def plot_reconstructions(originals: Sequence[np.ndarray], columns: Sequence[tuple[str, np.ndarray]],
                         out_path: str | os.PathLike, *, title: str = "") -> None:
    """Grid: one row per held-out image; first column the original, then one column per
    extractor (``columns``: (label, uint8 [k, S, S, 3]))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(originals)
    ncol = 1 + len(columns)
    fig, axes = plt.subplots(k, ncol, figsize=(1.45 * ncol, 1.5 * k + 0.9), squeeze=False)
    for i in range(k):
        for j in range(ncol):
            ax = axes[i, j]
            img = originals[i] if j == 0 else columns[j - 1][1][i]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("original" if j == 0 else columns[j - 1][0], fontsize=7)
    fig.suptitle(title or "Held-out images and their reconstructions from each extractor's "
                 "patch tokens", fontsize=10)
    fig.tight_layout()
    _save_fig(fig, out_path)


def plot_operator_figure(task: str, rows, arrays: Mapping[str, np.ndarray],
                         out_path: str | os.PathLike, *, model: str = "",
                         eigen_kinds: Sequence[str] = ()) -> None:
    """Examples (rows) x [source image, truly transformed image, reconstruction from f(source),
    from f(transformed), from each operator applied to f(source)], with each column's feature
    R^2 and image MSE in its title; with ``eigen_kinds``, a panel of those operators'
    eigenvalues in the complex plane with the unit circle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    src, tgt, title = OPERATOR_TASKS[task]
    by_kind = {r["kind"]: r for r in rows if r["task"] == task}
    kinds = [k for k in by_kind if k not in ("none", "true")]
    cols = [("source image\n" + src, arrays[f"{task}/source"]),
            ("truly transformed\n" + tgt, arrays[f"{task}/target"])]
    names = {"none": "recon f(source)\n(no operator)", "true": "recon f(transformed)\n(ceiling)"}
    cols[0] = (cols[0][0] + "\n\n\n", cols[0][1])
    cols[1] = (cols[1][0] + "\n\n\n", cols[1][1])
    for kind in ["none", "true", *kinds]:
        r = by_kind[kind]
        label = names.get(kind, f"recon of\n{kind}(f(source))")
        cols.append((f"{label}\nfeature R² = {r['r2']:.3f}\nMSE→t = {r['mse_vs_transformed']:.4f}"
                     f"\nMSE→s = {r['mse_vs_original']:.4f}", arrays[f"{task}/recon/{kind}"]))
    k = len(cols[0][1])
    w_img = 1.45 * len(cols)
    w_eig = 4.6 if eigen_kinds else 0.0
    fig = plt.figure(figsize=(w_img + w_eig, 1.4 * k + 1.7))
    if eigen_kinds:
        left, right = fig.subfigures(1, 2, width_ratios=[w_img, w_eig], wspace=0.02)
    else:
        left, right = fig, None
    axes = left.subplots(k, len(cols), squeeze=False, gridspec_kw={"wspace": 0.05, "hspace": 0.05})
    for j, (label, imgs) in enumerate(cols):
        for i in range(k):
            ax = axes[i, j]
            ax.imshow(imgs[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=6)
    if right is not None:
        ax = right.subplots()
        t = np.linspace(0, 2 * np.pi, 400)
        ax.plot(np.cos(t), np.sin(t), color="0.6", lw=0.8, label="unit circle")
        markers = {"procrustes": "o", "symmetric": "s", "linear": "^", "affine": "v"}
        sizes = {"symmetric": 40}
        colours = {"procrustes": "tab:blue", "symmetric": "tab:orange", "linear": "tab:green",
                   "affine": "tab:red"}
        for kind in eigen_kinds:
            key = f"{task}/{kind}/eig"
            if key not in arrays:
                continue
            lam = arrays[key]
            r = by_kind[kind]
            c = colours.get(kind, "tab:gray")
            ax.scatter(lam.real, lam.imag, s=sizes.get(kind, 12), alpha=0.6,
                       marker=markers.get(kind, "o"),
                       facecolors="none" if kind == "symmetric" else c, edgecolors=c,
                       label=f"{kind}: {int(r['eig_near_plus_one'])} near +1, "
                             f"{int(r['eig_near_minus_one'])} near −1 "
                             f"(of {int(r['eig_n'])}; |λ±1| < 0.1)")
        ax.axhline(0, color="0.8", lw=0.5)
        ax.axvline(0, color="0.8", lw=0.5)
        ax.set_aspect("equal")
        ax.set_xlabel("Re λ")
        ax.set_ylabel("Im λ")
        ax.set_title("eigenvalues of the fitted operators W\n(an involution has λ = ±1)",
                     fontsize=8)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.suptitle(f"{title} in feature space{f' of {model}' if model else ''}: operators fitted on "
                 "train token pairs, shown on held-out images\n(R² of operated vs true "
                 "transformed features; MSE of reconstructions against the transformed (→t) and "
                 "the source (→s) image)", fontsize=9)
    _save_fig(fig, out_path)


# ---------------------------------------------------------------------------------------------
# jobs (called by workflow_scripts/inversion_*.py; usable from a notebook)


def _expected_tokens(model, dataset: str, split: str, layer: int, image_key: str = "images"
                     ) -> dict[str, Any]:
    prov = model.provenance()
    out = {"kind": "tokens", "model": model.spec, "dataset": dataset, "split": split,
           "layer": int(layer), "image_key": image_key}
    if "weights_sha256" in prov:
        out["weights_sha256"] = prov["weights_sha256"]
    return out


@torch.no_grad()
def heldout_tokens(model, dataset, n: int, layer: int, batch_size: int = 64,
                   keep_images: bool = True) -> tuple[torch.Tensor, list[Image.Image]]:
    """Tokens [n, P, D] (computed now, not cached) of the first ``n`` images, read batch by
    batch, and those PIL images (an empty list unless ``keep_images``)."""
    from .tokens import encode_tokens

    n = min(int(n), len(dataset))
    toks, kept = [], []
    for a in range(0, n, batch_size):
        images = dataset.images(a, min(a + batch_size, n))
        toks.append(encode_tokens(model, model.preprocess(images), layer).cpu())
        if keep_images:
            kept += images
    return (torch.cat(toks) if toks else torch.empty(0)), kept


def run_training(
    *, spec: str, load: Mapping[str, Any], tokens_path: str | os.PathLike | None, dataset: str,
    train_split: str, eval_split: str, layer: int, reconstructor: Mapping[str, Any],
    train: Mapping[str, Any], out_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike,
    results: str, resources: str, train_images: int | None = None,
    memory_limit_gb: float = 4.0, progress: bool = True,
) -> dict[str, Any]:
    """Train the reconstructor of extractor ``spec`` and save it to ``out_dir``; see
    :func:`train_reconstructor`.  Tokens come from the token cache ``tokens_path`` (of
    ``dataset``/``train_split``; read into memory when smaller than ``memory_limit_gb``, else
    per batch) or, with ``tokens_path=None``, are computed online by the extractor."""
    from .models.registry import load_model, resolve_device
    from .tokens import encode_tokens, open_tokens, open_view, token_grid

    model = load_model(spec, **load)
    model.model.eval()
    data = open_view(dataset, train_split, results=results, resources=resources, rows=train_images)
    targets = target_transform(model)
    if tokens_path:
        cache = open_tokens(tokens_path, _expected_tokens(model, dataset, train_split, layer))
        n, P, D = cache.shape
        grid, tok_prov = cache.grid, cache.provenance
        if len(data) != n:
            raise ValueError(f"{tokens_path} has {n} rows but {dataset}/{train_split} has "
                             f"{len(data)} images: rebuild the token cache")
        in_memory = n * P * D * 2 <= memory_limit_gb * 2**30
        source = PairSource(cache.load() if in_memory else str(tokens_path), data, targets)
        cache.close()
        mode = "cached, in memory" if in_memory else "cached, read per batch"
    else:
        def encode(px: torch.Tensor) -> torch.Tensor:
            return encode_tokens(model, px, layer)

        source = PairSource(None, data, targets, encode=encode)
        grid, mode = token_grid(model), "online"
        with torch.no_grad():
            D = int(encode(targets.pixels_and_targets([data.image(0)])[0]).shape[-1])
        tok_prov = {**model.provenance(), **data.describe(), "layer": int(layer), "grid": grid}
    evalset = open_view(dataset, eval_split, results=results, resources=resources)
    s_tok, s_img = heldout_tokens(model, evalset, int(train["sample_images"]), layer)
    sample = (s_tok, targets(s_img))
    net = build_reconstructor(D, grid, model.image_size, reconstructor, seed=train["seed"])
    log.info("%s: reconstructor %s parameters, %d training images (tokens %s), %d steps", spec,
             f"{sum(p.numel() for p in net.parameters()):,}", len(source), mode, train["steps"])
    rec = train_reconstructor(
        net, source, steps=train["steps"], batch_size=train["batch_size"], lr=train["lr"],
        warmup=train["warmup"], min_lr_factor=train["min_lr_factor"],
        weight_decay=train["weight_decay"], grad_clip=train["grad_clip"], seed=train["seed"],
        device=resolve_device(load.get("device", "cpu")), amp=train["amp"],
        workers=train["workers"], checkpoint_dir=checkpoint_dir,
        checkpoint_every=train["checkpoint_every"], sample=sample,
        sample_every=train["sample_every"] or train["steps"],
        fingerprint_data={k: tok_prov.get(k) for k in
                          ("model", "weights_sha256", "revision", "dataset", "split", "n",
                           "layer", "image_key", "grid")},
        progress=progress)
    meta = {"extractor": spec, "family": model.family, "image_size": int(model.image_size),
            "grid": list(grid), "layer": int(layer), "dataset": dataset,
            "train_split": train_split, "train_pairs": len(source), "train_tokens": mode,
            "train": dict(train), "parameters": int(sum(p.numel() for p in net.parameters())),
            "threads": torch.get_num_threads(), **rec}
    save_reconstructor(net.cpu(), meta, out_dir)
    return meta


def run_heldout(
    *, spec: str, load: Mapping[str, Any], recon_dir: str | os.PathLike, dataset: str,
    split: str, n_images: int, layer: int, group: str, out_path: str | os.PathLike,
    results: str, resources: str, batch_size: int = 64,
) -> dict[str, Any]:
    """Reconstruct the first ``n_images`` of ``dataset``/``split`` from extractor ``spec``'s
    tokens (computed now) with its reconstructor; write uint8 reconstructions ``/recon``
    [n, S, S, 3] and ``/index`` to an HDF5 file with provenance (model, group, resolution, ...)."""
    import h5py

    from .io import library_versions, mark_complete, set_provenance
    from .models.registry import load_model
    from .tokens import open_view

    model = load_model(spec, **load)
    model.model.eval()
    net, meta = load_reconstructor(recon_dir, device=model.device)
    if int(meta["layer"]) != int(layer):
        raise ValueError(f"{recon_dir} was trained on layer {meta['layer']}, asked for {layer}")
    data = open_view(dataset, split, results=results, resources=resources)
    tok, _ = heldout_tokens(model, data, n_images, layer, batch_size, keep_images=False)
    rec = to_uint8(reconstruct(net, tok, batch_size))
    prov = {"kind": "reconstructions", "model": spec, "family": model.family, "group": group,
            "resolution": int(model.image_size), "grid": meta["grid"], "layer": int(layer),
            "dataset": dataset, "split": split, "n": int(len(rec)),
            "reconstructor": meta["fingerprint"], "library_versions": library_versions()}
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("recon", data=rec, compression="gzip", compression_opts=1)
        h5.create_dataset("index", data=np.arange(len(rec), dtype=np.int64))
        set_provenance(h5, prov)
        mark_complete(h5)
    return prov


def read_heldout(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """(uint8 reconstructions [n, S, S, 3], provenance) of a file from :func:`run_heldout`."""
    import h5py

    from .io import check_provenance

    prov = check_provenance(path, {"kind": "reconstructions"})
    with h5py.File(path, "r") as h5:
        return h5["recon"][()], prov


def run_scoring(
    *, scorer: str, load: Mapping[str, Any], heldout: Sequence[str | os.PathLike],
    variants: Sequence[str], results: str, resources: str, batch_size: int = 64,
):
    """Per-image similarity rows (:func:`similarity_rows`) of every held-out reconstruction file
    under scorer ``scorer``; all files must cover the same images of one dataset split."""
    import pandas as pd

    from .models.registry import load_model
    from .tokens import open_view

    recs, provs = {}, []
    for path in heldout:
        arr, prov = read_heldout(path)
        recs[prov["model"]] = [Image.fromarray(a) for a in arr]
        provs.append(prov)
    keys = {(p["dataset"], p["split"], p["n"]) for p in provs}
    if len(keys) != 1:
        raise ValueError(f"held-out reconstructions cover different images: {sorted(keys)}")
    dataset, split, n = keys.pop()
    data = open_view(dataset, split, results=results, resources=resources)
    originals = data.images(0, n)
    model = load_model(scorer, **load)
    model.model.eval()
    rows = similarity_rows(model, originals, recs, variants=variants, batch_size=batch_size)
    info = {p["model"]: p for p in provs}
    df = pd.DataFrame(rows)
    df.insert(3, "group", [info[s]["group"] for s in df.extractor])
    df.insert(4, "resolution", [int(info[s]["resolution"]) for s in df.extractor])
    return df


def run_operators(
    *, spec: str, load: Mapping[str, Any], recon_dir: str | os.PathLike,
    train_caches: Mapping[str, str], test_caches: Mapping[str, str], dataset: str,
    test_split: str, tasks: Mapping[str, Sequence[str]], ridge: float, n_examples: int,
    results: str, resources: str, test_images: int | None = None, blue_factor: float = 0.0,
    layer: int = -2,
):
    """Fit and evaluate the colour operators (:func:`fit_colour_operators`,
    :func:`evaluate_colour_operators`) in the token space of ``spec``; returns (table rows,
    arrays).  ``train_caches`` / ``test_caches``: view key -> token cache path."""
    from .models.registry import load_model
    from .tokens import open_tokens, open_view

    model = load_model(spec, **load)
    model.model.eval()
    net, meta = load_reconstructor(recon_dir)
    if int(meta["layer"]) != int(layer):
        raise ValueError(f"{recon_dir} was trained on layer {meta['layer']}, operators use {layer}")
    train = {k: open_tokens(p, {"kind": "tokens", "model": spec, "image_key": k, "layer": layer})
             for k, p in train_caches.items()}
    test = {k: open_tokens(p, {"kind": "tokens", "model": spec, "image_key": k, "layer": layer})
            for k, p in test_caches.items()}
    fitted = fit_colour_operators(train, tasks, ridge=ridge)
    targets = target_transform(model)
    images = {}
    for key in test:
        view = open_view(dataset, test_split, results=results, resources=resources,
                         image_key=key, rows=test_images, blue_factor=blue_factor)
        images[key] = torch.cat([targets(view.images(a, min(a + 256, len(view))))
                                 for a in range(0, len(view), 256)])
    rows, arrays = evaluate_colour_operators(fitted, test, images, net, n_examples=n_examples)
    for tc in [*train.values(), *test.values()]:
        tc.close()
    for r in rows:
        r["model"] = spec
    return rows, arrays
