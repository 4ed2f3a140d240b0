"""Training study 000's reconstructor: (tokens, image) pairs, a step-indexed batch plan, the loss,
checkpoints and sample grids, on the core training loop (:mod:`cliplens.core.train`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...core.io import atomic_path
from ...core.settings import ReconstructorTrain
from ...core.train import TrainLoop, fingerprint, window_means
from .reconstructor import CHECKPOINT_FILE, Reconstructor


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
        from ...core.caches.tokens import open_tokens

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
    train: ReconstructorTrain,
    *,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | os.PathLike | None = None,
    sample: tuple[torch.Tensor, torch.Tensor] | None = None,
    fingerprint_data: Any = None,
    stats_images: int = 1024,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train ``net`` in place on ``source`` with the ``inversion.train`` settings; return the
    training record.

    Loss: mean squared error between ``net(tokens)`` and the target image in [-1, 1].  Adam
    (``weight_decay`` > 0: AdamW) at peak ``lr`` on :class:`~cliplens.core.train.TrainLoop`
    (``warmup`` = fraction of ``steps``, cosine decay to ``min_lr_factor``; ``grad_clip``),
    batches from :class:`BatchPlan` (``seed``).  Every ``checkpoint_every`` steps and at the end,
    ``{checkpoint_dir}/last.pt`` is replaced atomically by everything needed to resume, under a
    fingerprint of ``fingerprint_data``, the architecture and the hyper-parameters; on start, a
    checkpoint with the same fingerprint is resumed (another one is ignored, with a warning).
    Every ``sample_every`` steps the held-out ``sample`` (tokens, targets) is reconstructed: its
    loss goes to the record and a grid to ``{checkpoint_dir}/samples/step_NNNNNN.png``.
    ``on_step(step)`` is called after each completed step (tests use it to kill the job).
    ``amp`` runs the forward pass in bfloat16 autocast on CUDA.  Before the first step the input
    whitening is fitted on the tokens of ``stats_images`` evenly spaced training images
    (:meth:`Reconstructor.fit_token_stats`).  An online ``source`` (:class:`PairSource` without
    a token cache) yields pixels, encoded here by ``source.encode``.

    Returns ``{steps, resumed_from, final_loss (mean of the last min(20, points) history
    points), history [[step, mean loss since the previous point]] at every max(1, steps // 50)
    steps, val_history [[step, loss]], seconds, fingerprint}``.
    """
    device = torch.device(device)
    steps = int(train.steps)
    warmup_steps = int(round(float(train.warmup) * steps))
    hyper = {"steps": steps, "batch_size": int(train.batch_size), "lr": float(train.lr),
             "warmup_steps": warmup_steps, "min_lr_factor": float(train.min_lr_factor),
             "weight_decay": float(train.weight_decay), "grad_clip": float(train.grad_clip),
             "seed": int(train.seed), "n": len(source), "amp": bool(train.amp)}
    fp = fingerprint({"net": net.config, "train": hyper, "data": fingerprint_data,
                      "checkpoint_format": 2})
    net.to(device).train()
    opt_cls = torch.optim.AdamW if train.weight_decay > 0 else torch.optim.Adam
    opt = opt_cls(net.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    loop = TrainLoop(
        net, opt, steps=steps, warmup_steps=warmup_steps, min_lr_factor=train.min_lr_factor,
        grad_clip=train.grad_clip, desc="train reconstructor", hint="lower inversion.train.lr",
        progress=progress,
        checkpoint_path=Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir else None,
        checkpoint_every=train.checkpoint_every, fingerprint=fp)
    loop.extra["val_history"] = []
    start = loop.resume() or 0
    if loop.resumed_from is None:
        rows = np.unique(np.linspace(0, len(source) - 1, min(len(source), stats_images)).round()
                         .astype(int))
        net.fit_token_stats(source.tokens(rows[a:a + 64]) for a in range(0, len(rows), 64))

    sample_every = int(train.sample_every) or steps  # 0: only at the end

    def sample_pass(step: int) -> None:
        if sample is None or (step % sample_every and step != steps):
            return
        net.eval()
        with torch.no_grad():
            tok, tgt = sample
            rec = net(tok.to(device)).float().cpu()
        net.train()
        loop.extra["val_history"].append([float(step), float(F.mse_loss(rec, tgt))])
        if checkpoint_dir:
            _save_grid(Path(checkpoint_dir) / "samples" / f"step_{step:06d}.png", tgt, rec)

    plan = BatchPlan(len(source), train.batch_size, train.seed)
    loader = torch.utils.data.DataLoader(
        source, batch_size=None, sampler=plan.steps(start, steps), num_workers=int(train.workers),
        pin_memory=device.type == "cuda", persistent_workers=False,
    ) if train.workers > 0 else (source[rows] for rows in plan.steps(start, steps))
    batches = iter(loader)
    encode = source.encode if getattr(source, "online", False) else None
    use_amp = bool(train.amp) and device.type == "cuda"

    def loss_fn(step: int):
        tok, tgt = next(batches)
        tok, tgt = tok.to(device, non_blocking=True), tgt.to(device, non_blocking=True)
        if encode is not None:  # online mode: the batch holds the extractor's pixels
            with torch.no_grad():
                tok = encode(tok).float()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = net(tok)
        return F.mse_loss(out.float(), tgt), {}

    losses = loop.run(loss_fn, callbacks=[sample_pass], on_step=on_step)
    net.eval()
    history = window_means(losses, max(1, steps // 50))
    tail = [h[1] for h in history[-max(1, min(20, len(history))):]]
    return {"steps": steps, "resumed_from": loop.resumed_from,
            "final_loss": float(np.mean(tail)) if tail else float("nan"),
            "history": history, "val_history": loop.extra["val_history"],
            "seconds": round(loop.seconds, 3), "fingerprint": fp}
