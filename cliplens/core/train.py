"""One training loop for everything cliplens trains: toy models, reconstructors, and the coming
sparse autoencoders and projection fine-tunes.

:class:`TrainLoop` runs ``steps`` optimiser steps of a loss the caller computes; it owns what
every trainer needs and none of them should write again:

* the schedule: linear warm-up, then cosine decay to ``min_lr_factor`` (:func:`lr_factor`);
* the step: ``zero_grad``, ``backward``, optional gradient-norm clipping, ``step``, schedule,
  then the caller's ``after_step`` (e.g. clamping a temperature);
* a finite-loss guard: a NaN or infinite loss stops training with the step and what to lower;
* a progress bar (tqdm) with the loss parts of the latest step, every ``steps / 50`` steps;
* atomic, resumable checkpoints: modules, optimiser, scheduler, RNG state, step, every step's
  loss and the caller's ``extra`` state, under a fingerprint of everything that determines the
  result.  :meth:`TrainLoop.resume` loads a checkpoint only if its fingerprint matches, so a job
  killed and resumed ends with the weights an uninterrupted run reaches, provided the caller's
  batches are a function of the step (or their generator state is in ``extra``).
* self-healing checkpoints: each is saved with its SHA-256 beside it (``last.pt.sha256``) and
  the one before it is kept (``last.prev.pt``).  On resume a checkpoint whose bytes do not match
  its digest (a flipped bit, a truncated copy, a job killed between the two writes) is set
  aside as ``*.corrupt`` with a warning, and training resumes from the previous good one or
  from scratch: never from wrong weights.

Every step's loss is kept (:attr:`TrainLoop.losses`), so summaries (a windowed history, the mean
of the last steps) are the same with or without a resume.
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

import torch

from .io import atomic_path, sha256_file, write_text_atomic

log = logging.getLogger(__name__)

#: a step's loss and its named parts (floats shown on the progress bar)
StepLoss = tuple[torch.Tensor, Mapping[str, float]]


def lr_factor(step: int, steps: int, warmup_steps: int, min_factor: float = 0.0) -> float:
    """Learning-rate multiplier at 0-based ``step`` of ``steps``.

    Linear warm-up ``(step + 1) / warmup_steps`` over the first ``warmup_steps`` steps, then
    cosine decay ``m + (1 - m) (1 + cos(pi (step - w) / max(steps - w, 1))) / 2`` from 1 to
    ``m = min_factor`` (the numerator capped at its denominator, so steps past the end stay
    at ``m``)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(steps - warmup_steps, 1)
    done = min(step - warmup_steps, span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * done / span))


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (what a checkpoint must match to be resumed)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


#: suffix of the digest file beside a checkpoint, and of a checkpoint set aside as damaged
DIGEST_SUFFIX, CORRUPT_SUFFIX = ".sha256", ".corrupt"


def previous_path(path: str | os.PathLike) -> Path:
    """Where the checkpoint before ``path`` is kept: ``last.pt`` -> ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """``torch.save(state)`` under a temporary name, fsync, rename: never a half-written file.

    The checkpoint already at ``path`` (with its digest) becomes :func:`previous_path`; the new
    one's SHA-256 is written to ``{path}.sha256`` after it is in place (a crash in between
    leaves a checkpoint without digest, which :func:`load_checkpoint` does not trust)."""
    path = Path(path)
    digest = Path(f"{path}{DIGEST_SUFFIX}")
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
        sha = sha256_file(tmp)
        if path.exists():
            prev = previous_path(path)
            os.replace(path, prev)
            if digest.exists():
                os.replace(digest, f"{prev}{DIGEST_SUFFIX}")
    write_text_atomic(digest, sha + "\n")


def _set_aside(path: Path, why: str) -> None:
    for p in (path, Path(f"{path}{DIGEST_SUFFIX}")):
        if p.exists():
            os.replace(p, f"{p}{CORRUPT_SUFFIX}")
    log.warning("checkpoint %s is damaged (%s): set aside as %s%s", path, why, path,
                CORRUPT_SUFFIX)


def _verified(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if its bytes match its recorded digest and it loads; a
    damaged one is set aside (None)."""
    digest = Path(f"{path}{DIGEST_SUFFIX}")
    want = digest.read_text().strip() if digest.is_file() else None
    if want is None:
        _set_aside(path, "no digest beside it: its writer did not finish")
        return None
    got = sha256_file(path)
    if got != want:
        _set_aside(path, f"SHA-256 {got}, recorded {want}")
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is set aside
        _set_aside(path, f"torch.load failed: {err}")
        return None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """The newest good checkpoint: ``path`` if its SHA-256 matches the one recorded beside it
    and it loads (``torch.load(weights_only=True)``: tensors and plain containers only), else
    the previous one (:func:`previous_path`) under the same test, else None.  Damaged ones
    are set aside as ``*.corrupt`` with a warning."""
    path = Path(path)
    for candidate in (path, previous_path(path)):
        if candidate.is_file():
            ckpt = _verified(candidate)
            if ckpt is not None:
                return ckpt
    return None


def rng_state() -> dict[str, Any]:
    """The global torch RNG state (CPU, and every CUDA device when there is one)."""
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def window_means(losses: Sequence[float], every: int) -> list[list[float]]:
    """``[[k, mean of losses since the previous entry]]`` at every k (1-based step count) that
    is a multiple of ``every``, and at the last step."""
    import numpy as np

    out, start = [], 0
    for k in range(1, len(losses) + 1):
        if k % every == 0 or k == len(losses):
            out.append([float(k), float(np.mean(losses[start:k]))])
            start = k
    return out


class TrainLoop:
    """Optimiser steps over ``modules`` (see the module docstring).

    ``modules``: the trained ``nn.Module`` s (their parameters are clipped and checkpointed);
    ``optimizer`` over their parameters; ``steps``; ``warmup_steps`` and ``min_lr_factor`` of
    the schedule; ``grad_clip`` (max gradient norm, 0 = none); ``desc`` names the bar and error
    messages; ``hint`` is what a diverging loss message advises.  ``checkpoint_path`` with
    ``checkpoint_every`` > 0 saves every that many steps and after the last one; ``fingerprint``
    identifies the run (architecture, hyper-parameters, data)."""

    def __init__(
        self,
        modules: torch.nn.Module | Sequence[torch.nn.Module],
        optimizer: torch.optim.Optimizer,
        *,
        steps: int,
        warmup_steps: int = 0,
        min_lr_factor: float = 0.0,
        grad_clip: float = 0.0,
        desc: str = "train",
        hint: str = "lower the learning rate",
        progress: bool = True,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int = 0,
        fingerprint: str | None = None,
    ):
        self.modules = [modules] if isinstance(modules, torch.nn.Module) else list(modules)
        self.optimizer = optimizer
        self.steps, self.warmup_steps = int(steps), int(warmup_steps)
        self.min_lr_factor = float(min_lr_factor)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, self.steps, self.warmup_steps, self.min_lr_factor))
        self.grad_clip = float(grad_clip)
        self.desc, self.hint, self.progress = desc, hint, progress
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.checkpoint_every = int(checkpoint_every)
        self.fingerprint = fingerprint
        self.step = 0
        self.losses: list[float] = []
        #: the caller's own resumable state (plain containers and tensors)
        self.extra: dict[str, Any] = {}
        self.resumed_from: int | None = None
        self.seconds = self.cpu_seconds = 0.0

    # -- checkpoints --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"modules": [m.state_dict() for m in self.modules],
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(), "step": self.step, "losses": list(self.losses),
                "extra": self.extra, "fingerprint": self.fingerprint}

    def save(self) -> None:
        if self.checkpoint_path is not None:
            save_checkpoint(self.checkpoint_path, self.state())

    def resume(self) -> int | None:
        """Load the checkpoint if there is one with this run's fingerprint (ignore, with a
        warning, one of another run); return the step it resumes at, or None."""
        if self.checkpoint_path is None:
            return None
        ckpt = load_checkpoint(self.checkpoint_path)
        if ckpt is None:
            return None
        if ckpt.get("fingerprint") != self.fingerprint:
            log.warning("ignoring checkpoint %s: it belongs to another configuration or data",
                        self.checkpoint_path)
            return None
        for m, s in zip(self.modules, ckpt["modules"]):
            m.load_state_dict(s)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        self.step = self.resumed_from = int(ckpt["step"])
        self.losses = [float(x) for x in ckpt["losses"]]
        self.extra = dict(ckpt["extra"])
        log.info("resuming from the checkpoints in %s at step %d of %d",
                 self.checkpoint_path.parent, self.step, self.steps)
        return self.step

    # -- the loop -----------------------------------------------------------------------------
    def parameters(self) -> Iterable[torch.nn.Parameter]:
        for m in self.modules:
            yield from m.parameters()

    def run(
        self,
        loss_fn: Callable[[int], StepLoss],
        *,
        after_step: Callable[[], None] | None = None,
        callbacks: Iterable[Callable[[int], None]] = (),
        on_step: Callable[[int], None] | None = None,
    ) -> list[float]:
        """Run the remaining steps.  ``loss_fn(step)`` (0-based) returns the loss tensor and its
        named parts (shown on the bar; empty: the loss).  After each optimiser step
        ``after_step()`` runs, then each callback with the number of completed steps (their
        effects, e.g. a held-out loss in ``extra``, are in that step's checkpoint), then the
        periodic checkpoint, then ``on_step`` (e.g. a test killing the job).  Returns every
        step's loss."""
        from tqdm.auto import tqdm

        every = max(1, self.steps // 50)
        t0, c0 = time.perf_counter(), time.process_time()
        bar = tqdm(total=self.steps, initial=self.step, desc=self.desc,
                   disable=not self.progress, mininterval=2.0)
        for m in self.modules:
            m.train()
        while self.step < self.steps:
            loss, parts = loss_fn(self.step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(list(self.parameters()), self.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            if after_step is not None:
                after_step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"{self.desc}: loss became {value} at step {self.step}; "
                                         f"{self.hint}")
            self.losses.append(value)
            self.step += 1
            bar.update(1)
            if self.step % every == 0 or self.step == self.steps:
                bar.set_postfix({k: f"{v:.4f}" for k, v in (parts or {"loss": value}).items()})
            for cb in callbacks:
                cb(self.step)
            if (self.checkpoint_every and self.step % self.checkpoint_every == 0
                    and self.step != self.steps):
                self.save()
            if on_step is not None:
                on_step(self.step)
        bar.close()
        for m in self.modules:
            m.train(False)
        self.seconds += time.perf_counter() - t0
        self.cpu_seconds += time.process_time() - c0
        self.save()
        return self.losses
