"""Training a toy model on the toy world, evaluating it zero-shot, saving it.

Training applies the loader's own preprocessing (open_clip's eval transform, the transformers
image processor) once to the whole split, tokenises every caption as the loader does
(open_clip's tokenizer; the toy word-level tokenizer with ``padding="max_length"``), then runs
AdamW on :class:`~cliplens.core.train.TrainLoop` (linear warm-up, cosine decay) over batches from
:class:`~cliplens.core.toy.batching.BatchSampler` (random, or grouped hard negatives).  With
``train.partial_captions`` (clip family, rich captions) part of each batch's captions are
swapped for partial ones naming only some factors ("a crimson item"), and the softmax
contrastive loss counts every caption true of an image as its positive
(:func:`~cliplens.core.toy.objectives.caption_match`): CLIP's web captions rarely name
everything, and one-factor zero-shot prompts need text embeddings that mean one factor.
Otherwise the labels only pick the batches and never enter the loss.  Everything is seeded: the
same config, data and thread count give the same weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..io import apply_umask_modes, private_dir
from ..settings import ToyModelSettings, ToyTrain
from ..train import TrainLoop
from .batching import BatchSampler, partial_caption_set
from .models import IMAGE_OBJECTIVE_FILE, ToyModel, build_toy_model, toy_model_config
from .objectives import caption_match

log = logging.getLogger(__name__)

#: ``fit(attention=...)`` choices
ATTENTION_BACKENDS = ("math", "default")


def make_optimizer(toy: ToyModel, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (betas 0.9/0.98, eps 1e-6; torch's fused kernel where available); weight decay on
    matrices only (ndim >= 2), not on gains, biases, temperatures or the logit bias."""
    decay, no_decay = [], []
    for _, p in toy.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = {"lr": lr, "betas": (0.9, 0.98), "eps": 1e-6}
    try:  # the fused kernel is several times faster on CPU (8 M parameters, mostly token embeddings)
        return torch.optim.AdamW(groups, fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, **kw)


def attention_backend(name: str, device: str | torch.device = "cpu"):
    """Context manager choosing the kernel behind ``F.scaled_dot_product_attention`` (which
    open_clip's ``nn.MultiheadAttention`` and transformers' SigLIP call) while a toy trains.

    ``"math"`` on a CPU: the plain ``softmax(Q K^T / sqrt(d)) V`` of batched matrix products
    (the same function; only rounding differs).  The toys' sequences are short (17 image
    tokens, 28 text tokens) and there the fused flash kernel torch picks by default costs more
    than it saves: ``benchmarks/toy_step_speed.py`` measures both per training step.  On other
    devices, and with ``"default"``, torch chooses.
    """
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {name!r}")
    if name == "math" and torch.device(device).type == "cpu":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def fit(
    toy: ToyModel,
    pixels: torch.Tensor,
    tokens: torch.Tensor,
    train_cfg: ToyTrain,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    labels: Mapping[str, Any] | None = None,
    partial: Mapping[str, Any] | None = None,
    attention: str = "math",
) -> dict[str, Any]:
    """Train ``toy`` on (``pixels`` [N, 3, S, S], ``tokens`` [N, L]) pairs.

    ``train_cfg``: ``steps``, ``batch_size`` (capped at N), ``lr``, ``weight_decay``,
    ``warmup`` (a fraction of ``steps``), ``seed`` (batch order and masks), ``batching``
    (see :class:`BatchSampler`).  With random batching each epoch visits a fresh permutation;
    the last incomplete batch of an epoch is dropped.  ``labels`` (factor -> [N] ints) are
    needed only by grouped batching, to choose the batches.  ``partial`` (as
    :func:`partial_caption_set` builds it: ``tokens`` [V, N, L], ``named`` bool [V, N, F],
    ``labels`` int [N, F], ``fraction``, ``where``): each step swaps each pair's caption
    (``where: random``: only the pairs outside the batch's groups), with probability
    ``fraction``, for one of its V partial captions, and the loss is the multi-positive one
    over :func:`caption_match` (the dataset's captions name every factor).  Returns
    ``{"steps", "final_loss" (mean of the last min(10, steps) steps), "loss_history"
    ([step, loss] at about 20 points), "seconds" (wall clock), "cpu_seconds" (CPU time of this
    process, all threads)}``.
    """
    steps = int(train_cfg.steps)
    n = len(pixels)
    if n == 0 or len(tokens) != n:
        raise ValueError(f"need as many captions as images, got {len(tokens)} and {n}")
    bs = min(int(train_cfg.batch_size), n)
    gen = torch.Generator().manual_seed(int(train_cfg.seed))
    opt = make_optimizer(toy, float(train_cfg.lr), float(train_cfg.weight_decay))
    toy.to(device)
    loop = TrainLoop(toy.modules(), opt, steps=steps,
                     warmup_steps=int(round(float(train_cfg.warmup) * steps)),
                     desc=f"train {toy.name}", hint="lower train.lr", progress=progress)
    sampler = BatchSampler(n, bs, gen, train_cfg.batching, labels)

    def loss_fn(step: int):
        idx = sampler.next()
        tok, match = tokens[idx], None
        if partial is not None:
            swap = torch.rand(len(idx), generator=gen) < float(partial["fraction"])
            if partial.get("where", "all") == "random":  # keep the groups' captions
                swap[:sampler.grouped] = False
            variant = torch.randint(len(partial["tokens"]), (len(idx),), generator=gen)
            tok = torch.where(swap[:, None], partial["tokens"][variant, idx], tok)
            named = partial["named"][variant, idx] | ~swap[:, None]
            match = caption_match(partial["labels"][idx], named).to(device)
        return toy.loss(pixels[idx].to(device), tok.to(device), gen, match)

    with attention_backend(attention, device):
        losses = loop.run(loss_fn, after_step=toy.after_step)
    every = max(1, steps // 20)
    history = [[s, round(v, 5)] for s, v in enumerate(losses) if s % every == 0 or s == steps - 1]
    tail = losses[-min(10, len(losses)):] if losses else [float("nan")]
    return {"steps": steps, "final_loss": float(np.mean(tail)), "loss_history": history,
            "seconds": loop.seconds, "cpu_seconds": loop.cpu_seconds}


# ---------------------------------------------------------------------------------------------
# embeddings and saving


@torch.no_grad()
def embed_images(toy: ToyModel, pixels: torch.Tensor, batch: int = 500, device="cpu") -> torch.Tensor:
    """L2-normalised image embeddings [N, D] (eval mode)."""
    toy.train(False)
    out = [toy.encode_image(pixels[i:i + batch].to(device)).float().cpu()
           for i in range(0, len(pixels), batch)]
    return F.normalize(torch.cat(out), dim=-1)




# ---------------------------------------------------------------------------------------------
# the whole job


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> cuda when available, else cpu; anything else as torch reads it."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train_toy(
    name: str,
    cfg: ToyModelSettings | Mapping[str, Any],
    train: Mapping[str, Any],
    progress: bool = True,
    device: str | torch.device | None = "cpu",
) -> tuple[ToyModel, dict[str, Any]]:
    """Build and train the toy model ``name``; return (model on the CPU, metadata).

    ``cfg`` is the model's settings (``toy_models.NAME``); ``train`` is a split as
    :func:`cliplens.core.data.toy.read_split` returns it (``images`` uint8 [N, H, W, 3],
    ``labels``, ``captions_rich``, ``captions_poor``).  Metadata: ``library, family, name,
    captions, config, image_size, embed_dim, parameters, steps, final_loss, loss_history,
    prep_seconds, train_seconds, train_cpu_seconds, threads, device[, image_objective]``.
    ``train_seconds`` is the optimisation loop; ``prep_seconds`` building the model,
    preprocessing the images and tokenising the captions.  Zero-shot scores of the trained
    model: :func:`cliplens.core.text.zeroshot.toy_zeroshot`.
    """
    cfg = toy_model_config(name, cfg)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    torch.manual_seed(int(cfg.train.seed))
    toy = build_toy_model(name, cfg)
    captions = train[f"captions_{cfg.captions}"]
    pixels = toy.preprocess(train["images"])
    tokens = toy.tokenize(captions)
    log.info("%s: %d pairs at %d px, %s parameters", name, len(pixels), cfg.image_size,
             f"{sum(p.numel() for _, p in toy.parameters()):,}")
    partial = partial_caption_set(toy, train.get("labels"), cfg.train)
    prep_seconds = time.perf_counter() - t0
    result = fit(toy, pixels, tokens, cfg.train, device=dev, progress=progress,
                 labels=train.get("labels"), partial=partial)
    del pixels, tokens
    meta: dict[str, Any] = {
        "library": toy.library,
        "family": cfg.family,
        "name": name,
        "captions": cfg.captions,
        "config": cfg.to_dict(),
        "image_size": int(cfg.image_size),
        "embed_dim": int(cfg.embed_dim),
        "parameters": int(sum(p.numel() for p in toy.model.parameters())),
        "steps": result["steps"],
        "final_loss": result["final_loss"],
        "loss_history": result["loss_history"],
        "prep_seconds": round(prep_seconds, 3),
        "train_seconds": round(result["seconds"], 3),
        "train_cpu_seconds": round(result["cpu_seconds"], 3),
        "threads": torch.get_num_threads(),
        "device": str(dev),
    }
    if toy.image_objective is not None:
        meta["image_objective"] = {"file": IMAGE_OBJECTIVE_FILE, **cfg.image_objective.to_dict()}
    toy.to("cpu")
    return toy, meta



def save_toy_model(toy: ToyModel, meta: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write the model directory atomically: everything goes into a temporary sibling, which
    then replaces ``out_dir`` (an existing ``out_dir`` is removed first).  The metadata records
    the SHA-256 of every file (``files_sha256``), which the loader checks."""
    from ..models.storage import DIGESTS, file_digests, write_model_meta

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_dir(out_dir.parent, prefix=f".{out_dir.name}.")
    try:
        toy.save(tmp)
        write_model_meta(tmp, {**meta, DIGESTS: file_digests(tmp)})
        apply_umask_modes(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
