"""Caption misalignment (study 004): a fraction Cs of the training captions replaced by a
TF-IDF-similar partner, and the two projection layers fine-tuned on the result.

Partners are found with sklearn's ``TfidfVectorizer`` and ``NearestNeighbors`` (cosine, brute
force), which compute distances in chunks of ``sklearn.get_config()["working_memory"]`` (1 GiB
by default): memory grows with the number of distinct captions, never with its square (the
published script builds the all-pairs similarity matrix, about 40 GB on CC3M).

Fine-tuning runs on features computed once: with the towers frozen, what enters each
projection does not change, so each step is two matrix products on cached rows.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def caption_partners(texts: Sequence[str], queries: np.ndarray) -> np.ndarray:
    """For each index in ``queries`` into the distinct ``texts``, the index of the most
    TF-IDF-similar other text (cosine of the TF-IDF rows; ties by index)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.neighbors import NearestNeighbors

    if len(texts) < 2:
        raise ValueError("misalignment needs at least two distinct captions")
    vec = TfidfVectorizer().fit_transform(texts)
    nn = NearestNeighbors(n_neighbors=2, metric="cosine", algorithm="brute").fit(vec)
    queries = np.asarray(queries, dtype=np.int64)
    _, idx = nn.kneighbors(vec[queries])
    return np.where(idx[:, 0] == queries, idx[:, 1], idx[:, 0])


def misalign(caption_index: np.ndarray, texts: Sequence[str], fraction: float, seed: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """(new caption index [N], the rows changed): ``round(fraction N)`` rows drawn with
    ``seed`` take the caption most TF-IDF-similar to theirs among the other distinct
    ``texts`` (``caption_index`` [N] points into ``texts``).  Cs = ``fraction`` in [0, 1]."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"misalignment fraction Cs = {fraction} is outside [0, 1]")
    idx = np.asarray(caption_index, dtype=np.int64)
    chosen = np.sort(np.random.default_rng(seed).choice(len(idx), int(round(fraction * len(idx))),
                                                        replace=False))
    out = idx.copy()
    if len(chosen):
        own = np.unique(idx[chosen])
        partner = dict(zip(own.tolist(), caption_partners(texts, own).tolist()))
        out[chosen] = [partner[c] for c in idx[chosen].tolist()]
    return out, chosen


def random_projection(d_in: int, d_out: int, seed: int) -> torch.Tensor:
    """A projection as open_clip initialises one: N(0, d_in^-1/2) entries [d_in, d_out]."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d_in, d_out, generator=g) * d_in ** -0.5


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """CLIP's symmetric InfoNCE of matched rows of ``image`` and ``text`` [B, E] (normalised
    here), logits ``scale`` cos."""
    logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    target = torch.arange(len(logits))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def finetune_projections(image: np.ndarray, text: np.ndarray, caption_index: np.ndarray,
                         w_image: np.ndarray, w_text: np.ndarray, scale: float, *,
                         steps: int, batch_size: int, lr: float, seed: int, init: str,
                         checkpoint_path=None, checkpoint_every: int = 0,
                         fingerprint: str | None = None, progress: bool = True,
                         on_step=None):
    """Train only the projections ``P_i`` [Dv, E] and ``P_t`` [Dt, E] with CLIP's loss on
    pairs (``image`` [N, Dv] row n, ``text`` [U, Dt] row ``caption_index[n]``), starting
    from ``w_image``, ``w_text`` (``init="trained"``) or from open_clip's random
    initialisation (``init="random"``, as the published script unless resumed).  Adam at
    ``lr`` with the core loop's warm-up and cosine decay; batch of step s drawn with
    ``seed + s`` (a resumed job sees the same batches).  Returns (P_i, P_t, loop)."""
    from ...core.train import TrainLoop

    if init not in ("trained", "random"):
        raise ValueError(f"unknown init {init!r}: trained or random")
    x = torch.as_tensor(image, dtype=torch.float32)
    t = torch.as_tensor(text, dtype=torch.float32)
    cap = torch.as_tensor(caption_index, dtype=torch.long)
    if init == "trained":
        p_i = torch.nn.Parameter(torch.as_tensor(w_image, dtype=torch.float32).clone())
        p_t = torch.nn.Parameter(torch.as_tensor(w_text, dtype=torch.float32).clone())
    else:
        p_i = torch.nn.Parameter(random_projection(*w_image.shape, seed))
        p_t = torch.nn.Parameter(random_projection(*w_text.shape, seed + 1))
    holder = torch.nn.ParameterDict({"image": p_i, "text": p_t})
    opt = torch.optim.Adam(holder.parameters(), lr=lr)
    loop = TrainLoop(holder, opt, steps=steps, warmup_steps=max(1, steps // 10),
                     desc="finetune projections", hint="lower purity.misalign.train.lr",
                     progress=progress, checkpoint_path=checkpoint_path,
                     checkpoint_every=checkpoint_every, fingerprint=fingerprint)
    loop.resume()
    b = min(batch_size, len(x))

    def loss_fn(step):
        g = torch.Generator().manual_seed(seed + step)
        rows = torch.randperm(len(x), generator=g)[:b]
        loss = contrastive_loss(x[rows] @ holder["image"], t[cap[rows]] @ holder["text"], scale)
        return loss, {"clip": float(loss.detach())}

    loop.run(loss_fn, on_step=on_step)
    return holder["image"].detach().numpy(), holder["text"].detach().numpy(), loop
