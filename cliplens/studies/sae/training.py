"""Training an SAE on the rows of an embedding cache, in memory or streamed, on the core's
:class:`~cliplens.core.train.TrainLoop` (checkpoints, resume with the same final weights,
progress bar).

Batches are a function of the step alone (:class:`BlockOrder`), so a resumed run sees exactly
the batches an uninterrupted one would, and a streamed run the batches of an in-memory one:

* the rows are cut into blocks of ``block_rows`` (the cache's HDF5 chunks);
* epoch e visits the blocks in a permutation drawn from (seed, e), and the rows of each block
  in a permutation drawn from (seed, e, block);
* step s takes rows ``[s B, (s + 1) B)`` of that concatenated order (epochs follow each other
  without a gap, so a batch may straddle two epochs).

A streamed run (:class:`StreamedRows`) reads each block once per epoch with one slice read and
holds at most two blocks; an in-memory run (:class:`MemoryRows`) indexes one array.
"""

from __future__ import annotations

import functools
from typing import Callable, Protocol

import numpy as np
import torch

from ...core.train import TrainLoop
from .variants import SAE


class BlockOrder:
    """The visiting order of ``n`` rows in blocks of ``block_rows`` (module docstring)."""

    def __init__(self, n: int, block_rows: int, seed: int):
        if n < 1 or block_rows < 1:
            raise ValueError(f"need rows and a positive block size, got n={n}, "
                             f"block_rows={block_rows}")
        self.n, self.block_rows, self.seed = int(n), int(block_rows), int(seed)
        self.blocks = -(-self.n // self.block_rows)

    @functools.lru_cache(maxsize=4)
    def epoch(self, e: int) -> np.ndarray:
        """Row order [n] of epoch ``e``."""
        rng = np.random.default_rng([self.seed, e])
        parts = []
        for b in rng.permutation(self.blocks):
            a = int(b) * self.block_rows
            z = min(self.n, a + self.block_rows)
            parts.append(a + np.random.default_rng([self.seed, e, int(b)]).permutation(z - a))
        return np.concatenate(parts)

    def rows(self, step: int, batch_size: int) -> np.ndarray:
        """Row indices [batch_size] of step ``step``."""
        a = step * batch_size
        out = []
        while len(out) < batch_size:
            e, i = divmod(a, self.n)
            take = min(batch_size - len(out), self.n - i)
            out.extend(self.epoch(e)[i:i + take].tolist())
            a += take
        return np.asarray(out, dtype=np.int64)


class Rows(Protocol):
    n: int
    dim: int

    def __call__(self, rows: np.ndarray) -> np.ndarray: ...


class MemoryRows:
    """Rows of an array [n, d] held in memory."""

    def __init__(self, array: np.ndarray):
        self.array = np.asarray(array)
        self.n, self.dim = self.array.shape

    def __call__(self, rows):
        return self.array[rows]


class StreamedRows:
    """Rows of array ``name`` of an open :class:`~cliplens.core.caches.rows.RowCache`, read a
    block (``block_rows`` rows, one slice read, checked like every cache read) at a time and
    kept for the next batches; at most ``keep`` blocks in memory."""

    def __init__(self, cache, name: str, block_rows: int, keep: int = 2):
        self.cache, self.name, self.block_rows, self.keep = cache, name, int(block_rows), keep
        shape = cache.array(name).shape
        self.n, self.dim = int(shape[0]), int(shape[1])
        self._blocks: dict[int, np.ndarray] = {}
        self.reads = 0

    def _block(self, b: int) -> np.ndarray:
        if b not in self._blocks:
            a = b * self.block_rows
            self._blocks[b] = np.asarray(self.cache.read(
                self.name, np.arange(a, min(self.n, a + self.block_rows))))
            self.reads += 1
            while len(self._blocks) > self.keep:
                self._blocks.pop(next(iter(self._blocks)))
        return self._blocks[b]

    def __call__(self, rows):
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        blocks = rows // self.block_rows
        for b in dict.fromkeys(blocks.tolist()):            # in first-seen order
            sel = blocks == b
            out[sel] = self._block(b)[rows[sel] - b * self.block_rows]
        return out


class Normalised:
    """Rows of ``rows`` scaled to unit L2 norm (the published SAE trains on L2-normalised CLIP
    embeddings)."""

    def __init__(self, rows: Rows):
        self.rows, self.n, self.dim = rows, rows.n, rows.dim

    def __call__(self, idx):
        x = np.asarray(self.rows(idx), dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def train_sae(sae: SAE, rows: Rows, *, batch_size: int, epochs: float, lr: float,
              seed: int, block_rows: int, device: str = "cpu", desc: str = "sae",
              checkpoint_path=None, checkpoint_every: int = 0, fingerprint: str | None = None,
              progress: bool = True, on_step: Callable[[int], None] | None = None) -> TrainLoop:
    """Adam (``lr``, constant) on ``sae.loss`` over ``epochs`` passes of ``rows`` in batches of
    ``batch_size`` ordered by :class:`BlockOrder` (``block_rows``, ``seed``); the variant's
    ``after_step`` (unit-norm decoder rows) after each step.  Variants with ``init_from`` get
    their pre-bias from the first 4096 rows of epoch 0.  Returns the loop (its ``losses``,
    ``seconds``, ``resumed_from``)."""
    steps = max(1, int(round(epochs * rows.n / batch_size)))
    order = BlockOrder(rows.n, block_rows, seed)
    torch.manual_seed(seed)
    sae.to(device)
    if hasattr(sae, "init_from"):
        first = np.sort(order.epoch(0)[:min(rows.n, 4096)])
        sae.init_from(torch.as_tensor(rows(first), dtype=torch.float32))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    loop = TrainLoop(sae, opt, steps=steps, desc=desc, progress=progress,
                     hint="lower sae.lr or the sparsity penalty",
                     checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                     fingerprint=fingerprint, min_lr_factor=1.0)
    loop.resume()

    def loss_fn(step):
        x = torch.as_tensor(rows(order.rows(step, batch_size)), dtype=torch.float32,
                            device=device)
        return sae.loss(x)

    loop.run(loss_fn, after_step=sae.after_step, on_step=on_step)
    return loop
