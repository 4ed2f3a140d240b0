"""Caption misalignment (study 004): a fraction Cs of the training captions swapped in pairs
with TF-IDF-similar ones, and the two projection layers fine-tuned on the result.

Partners are found with sklearn's ``TfidfVectorizer`` and either sklearn's brute-force cosine
``NearestNeighbors`` (exact, chunked by ``sklearn.get_config()["working_memory"]``) or an
inverted-file index on ``MiniBatchKMeans`` cells (approximate, for a million captions; see
:mod:`.neighbours`): memory grows with N, never with N² (the published script fills the
all-pairs similarity matrix, 4 N² bytes).

Fine-tuning runs on features computed once: with the towers frozen, what enters each
projection does not change, so each step is two matrix products on cached rows.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def tfidf_vectorizer():
    """sklearn's ``TfidfVectorizer`` as the published script sets it: English stop words out,
    words and word pairs, at most 5,000 terms, unit L2 rows."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(stop_words="english", ngram_range=(1, 2), max_features=5000)


def tfidf_rows(texts: Sequence[str]):
    """TF-IDF rows of ``texts`` (sparse [N, V], unit L2 norm), fitted on ``texts``."""
    return tfidf_vectorizer().fit_transform(list(texts))


def pair_cosine(rows, a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine of the unit rows ``rows[a[i]]`` and ``rows[b[i]]`` (sparse or dense [N, V];
    ``a``, ``b`` [P]): how similar swapped partners are.  NaN for no pair."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if not len(a):
        return float("nan")
    prod = rows[a].multiply(rows[b]) if hasattr(rows, "multiply") else rows[a] * rows[b]
    return float(np.asarray(prod.sum(axis=1)).mean())


def misalign(caption_index: np.ndarray, texts: Sequence[str], fraction: float, seed: int,
             top_k: int = 10, block: int = 1024, search: str = "exact", probes: int = 16,
             progress: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """(new caption index [N], the rows whose caption moved, the swapped partners' mean
    TF-IDF cosine (:func:`pair_cosine`; NaN when nothing moved)): rows are visited in a random
    order (``seed``); an unpaired row swaps captions with one of its ``top_k`` most
    TF-IDF-similar unpaired rows whose caption differs from its own, drawn at random, until
    ``fraction`` N rows are paired (each swap pairs two, and changes both captions).
    ``caption_index`` [N] points into the distinct ``texts``.

    Each row's ``top_k + 64`` nearest rows are the candidates (paired rows and rows with the
    same caption are skipped; a row left with no candidate stays unpaired), found by
    ``search`` (:mod:`.neighbours`): ``"exact"`` -- brute force, ``block`` visited rows at a
    time, only until enough rows are paired; ``"ivf"`` -- the inverted-file index with
    ``probes`` cells, approximate, for every row at once.  Memory grows with N, never N².
    Cs = ``fraction`` in [0, 1]."""
    from .neighbours import exact_neighbours, ivf_neighbours

    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"misalignment fraction Cs = {fraction} is outside [0, 1]")
    if search not in ("exact", "ivf"):
        raise ValueError(f"unknown neighbour search {search!r}: exact or ivf")
    idx = np.asarray(caption_index, dtype=np.int64)
    n, target = len(idx), int(fraction * len(idx))
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    perm, used, paired = np.arange(n), np.zeros(n, dtype=bool), 0
    cosine = float("nan")
    if target >= 2:
        rows = tfidf_rows([texts[i] for i in idx])
        m = min(n, top_k + 64)
        if search == "ivf":
            every = ivf_neighbours(rows, m, probes=probes, seed=seed, progress=progress)
            nearest = every.__getitem__
        else:
            nearest = exact_neighbours(rows, m)
        for a in range(0, n, block):
            if paired >= target:
                break
            sources = order[a:a + block]
            near = nearest(sources)
            for s, cands in zip(sources, near):
                if paired >= target:
                    break
                if used[s]:
                    continue
                cands = [j for j in cands if j >= 0 and not used[j] and idx[j] != idx[s]][:top_k]
                if not cands:
                    continue
                t = cands[rng.integers(len(cands))]
                perm[s], perm[t] = perm[t], perm[s]
                used[s] = used[t] = True
                paired += 2
        moved = np.flatnonzero(perm != np.arange(n))
        cosine = pair_cosine(rows, moved, perm[moved])
    new = idx[perm]
    return new, np.flatnonzero(new != idx), cosine


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
