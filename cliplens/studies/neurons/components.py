"""Per unit (a neuron, or a neuron-head pair) over N images: mean, the top-k images by norm,
their sorted norms and the first principal component of the top-k -- out of core.

For unit u with representations r_i [D] (i = 1..N images):

    mean_u   = (1/N) sum_i r_i
    norm_i   = || r_i - mean_u ||
    top_u    = the k images of largest norm_i (sorted by norm, largest first)
    pc0_u    = the first right singular vector of X = [r_i - mean_u]_{i in top_u}  [k, D]
               (not re-centred), sign chosen so that more than k // 2 of X pc0_u are > 0
               (as published: otherwise -pc0_u; a tie at even k goes to the sign whose
               projections sum positive, where the published code leaves it to the SVD)

:func:`components_dense` computes this from a materialised array [N, U, D] (the reference);
:func:`components` from two passes over row blocks of the images (a store read block by block,
or representations recomputed by a model: the streaming path), keeping per unit only the
running sum, then the k best rows -- memory O(block + U k D), whatever N;
:func:`pair_components` from pair scalars s [N, H, C] and directions u [H, C, D] in closed form:
r_i = s_i u is rank one, so mean = mean(s) u, norm_i = |s_i - mean(s)| ||u||, and pc0 = +-u/||u||.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

#: a pass over the images: yields (start row, block [b, U, D]) in row order, covering 0..N-1
Blocks = Callable[[], Iterable[tuple[int, np.ndarray]]]


@dataclass
class Components:
    """mean [U, D], pc0 [U, D], top_norms [U, k] (largest first), top_images [U, k] (row
    indices, same order), n_images N.  Units are flattened (pairs: U = H * C)."""

    mean: np.ndarray
    pc0: np.ndarray
    top_norms: np.ndarray
    top_images: np.ndarray
    n_images: int


def _check_k(k: int, n: int) -> int:
    if k < 1:
        raise ValueError(f"top-k must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"top-k = {k} images asked, but only {n} images are there")
    return int(k)


def _signed_pc0(x: np.ndarray, units_per_svd: int = 256) -> np.ndarray:
    """First right singular vector of each x[u] [k, D], sign fixed as published. x: [U, k, D]
    -> [U, D] (float64 SVDs of ``units_per_svd`` units at a time)."""
    k = x.shape[1]
    out = np.empty((x.shape[0], x.shape[2]))
    for a in range(0, x.shape[0], units_per_svd):
        part = x[a:a + units_per_svd].astype(np.float64)
        _, _, vh = np.linalg.svd(part, full_matrices=False)
        v = vh[:, 0]                                              # [u, D]
        proj = np.einsum("ukd,ud->uk", part, v)
        out[a:a + units_per_svd] = v * _sign(proj, k)[:, None]
    return out


def _sign(proj: np.ndarray, k: int) -> np.ndarray:
    """+1 where more than k // 2 of a unit's projections [U, k] are positive, else -1 (as
    published).  A tie (k even, exactly k / 2 positive) would leave the sign to the SVD's
    arbitrary choice; it goes to the sign whose projections sum to a positive value."""
    positive = (proj > 0).sum(1)
    negative = (proj < 0).sum(1)
    tie = (positive == negative) & (positive == k // 2) & (k % 2 == 0)
    sign = np.where(positive > k // 2, 1.0, -1.0)
    return np.where(tie, np.where(proj.sum(1) >= 0, 1.0, -1.0), sign)


def _order(norms: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort each unit's kept (norm, index) largest first; returns (norms, idx, permutation)."""
    perm = np.argsort(-norms, axis=1, kind="stable")
    return (np.take_along_axis(norms, perm, 1), np.take_along_axis(idx, perm, 1), perm)


def components_dense(reps: np.ndarray, k: int) -> Components:
    """The reference on a materialised array reps [N, U, D] (float64 arithmetic)."""
    reps = np.asarray(reps, dtype=np.float64)
    n = reps.shape[0]
    k = _check_k(k, n)
    mean = reps.mean(0)
    centred = reps - mean
    norms = np.linalg.norm(centred, axis=-1).T                    # [U, N]
    top = np.argsort(norms, axis=1)[:, -k:]                       # ascending, as published
    top_norms, top_images, _ = _order(np.take_along_axis(norms, top, 1), top)
    x = centred.transpose(1, 0, 2)[np.arange(norms.shape[0])[:, None], top_images]
    return Components(mean, _signed_pc0(x), top_norms, top_images, n)


class _TopK:
    """Each unit's k largest norms seen so far, their rows and (optionally) their centred
    vectors, in fixed buffers: a new row replaces a unit's smallest kept one only where its norm
    is larger, so a pass costs O(rows x U) comparisons plus one copy per replacement."""

    def __init__(self, units: int, k: int, width: int | None, dtype=np.float32):
        self.k, self.filled = k, 0
        self.norms = np.full((units, k), -np.inf)
        self.rows = np.full((units, k), -1, dtype=np.int64)
        self.x = None if width is None else np.zeros((units, k, width), dtype=dtype)

    def add(self, norms: np.ndarray, rows: np.ndarray, x: np.ndarray | None) -> None:
        """norms [U, b], rows [b], x [U, b, D] (or None) of one block, in row order."""
        b, start = norms.shape[1], 0
        if self.filled < self.k:  # the first k rows fill the buffers as they come
            take = min(self.k - self.filled, b)
            sl = slice(self.filled, self.filled + take)
            self.norms[:, sl], self.rows[:, sl] = norms[:, :take], rows[:take]
            if self.x is not None:
                self.x[:, sl] = x[:, :take]
            self.filled += take
            start = take
            if self.filled < self.k:
                return
        low = self.norms.argmin(1)
        low_val = self.norms[np.arange(len(low)), low]
        for r in range(start, b):
            units = np.flatnonzero(norms[:, r] > low_val)
            if units.size == 0:
                continue
            slots = low[units]
            self.norms[units, slots] = norms[units, r]
            self.rows[units, slots] = rows[r]
            if self.x is not None:
                self.x[units, slots] = x[units, r]
            low[units] = self.norms[units].argmin(1)
            low_val[units] = self.norms[units, low[units]]


def components(blocks: Blocks, k: int) -> Components:
    """Mean, top-k and pc0 of every unit from two passes of ``blocks`` (each a fresh iterator of
    (start, [b, U, D]) covering the images in order): the first sums (float64), the second
    keeps each unit's k largest centred rows.  Equal to :func:`components_dense` on the
    concatenated blocks (up to float rounding and ties in the norms).  The kept rows are float32
    (U k D x 4 bytes: 315 MB for 3,072 neurons x 50 x 512); the mean is float64."""
    total, n = None, 0
    for start, x in blocks():
        if start != n:
            raise ValueError(f"blocks must cover the images in order: got row {start}, "
                             f"expected {n}")
        s = np.asarray(x, dtype=np.float64).sum(0)
        total = s if total is None else total + s
        n += x.shape[0]
    if n == 0:
        raise ValueError("no images")
    k = _check_k(k, n)
    mean = total / n
    top = _TopK(mean.shape[0], k, mean.shape[1])
    for start, x in blocks():
        c = (np.asarray(x, dtype=np.float64) - mean).transpose(1, 0, 2)   # [U, b, D]
        top.add(np.linalg.norm(c, axis=-1), np.arange(start, start + x.shape[0]), c)
    top_norms, top_images, perm = _order(top.norms, top.rows)
    best = np.take_along_axis(top.x, perm[..., None], 1)
    return Components(mean, _signed_pc0(best), top_norms, top_images, n)


def pair_components(scalar_blocks: Blocks, directions: np.ndarray, k: int,
                    bias: np.ndarray | None = None) -> Components:
    """The same statistics for neuron-head pairs from their scalars, exactly and without the
    [N, H, C, D] array.  ``scalar_blocks`` yields (start, s [b, H, C]); ``directions`` u
    [H, C, D].  ``bias`` [D], if given, is shared equally by the H * C pairs' means (the
    published pairs carry the pool's bias that way); it moves no norm or component.

    mean_{hc} = mean_i(s) u_{hc} (+ bias / (H C)); norm_i = |s_i - mean_i(s)| ||u_{hc}||;
    pc0_{hc} = u_{hc} / ||u_{hc}||, negated unless more than k // 2 of the top-k have
    s_i > mean(s) (ties as in the module docstring; zero where u_{hc} = 0)."""
    u = np.asarray(directions, dtype=np.float64)
    h, c, d = u.shape
    total, n = None, 0
    for start, s in scalar_blocks():
        if start != n:
            raise ValueError(f"blocks must cover the images in order: got row {start}, "
                             f"expected {n}")
        part = np.asarray(s, dtype=np.float64).reshape(s.shape[0], h * c).sum(0)
        total = part if total is None else total + part
        n += s.shape[0]
    if n == 0:
        raise ValueError("no images")
    k = _check_k(k, n)
    s_mean = total / n                                            # [U]
    top = _TopK(h * c, k, 1, dtype=np.float64)  # the signed deviation rides along as a row
    for start, s in scalar_blocks():
        dev = (np.asarray(s, dtype=np.float64).reshape(s.shape[0], h * c) - s_mean).T  # [U, b]
        top.add(np.abs(dev), np.arange(start, start + dev.shape[1]), dev[..., None])
    unorm = np.linalg.norm(u.reshape(h * c, d), axis=1)           # [U]
    top_dev, top_images, perm = _order(top.norms, top.rows)
    signed = np.take_along_axis(top.x[..., 0], perm, 1)            # [U, k]
    unit = np.divide(u.reshape(h * c, d), unorm[:, None], out=np.zeros((h * c, d)),
                     where=unorm[:, None] > 0)
    pc0 = unit * _sign(signed, k)[:, None]  # the projections on u/||u|| are s_i - mean(s), scaled
    mean = s_mean[:, None] * u.reshape(h * c, d)
    if bias is not None:
        mean = mean + np.asarray(bias, dtype=np.float64) / (h * c)
    return Components(mean, pc0, top_dev * unorm[:, None], top_images, n)


def array_blocks(arr, block_rows: int) -> Blocks:
    """A :data:`Blocks` over an array-like [N, ...] (numpy, h5py) in blocks of ``block_rows``."""
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")

    def gen():
        for a in range(0, arr.shape[0], block_rows):
            yield a, np.asarray(arr[a:a + block_rows])
    return gen
