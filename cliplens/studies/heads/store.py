"""Decomposition caches: every image's embedding as the terms of :func:`~.decompose.decompose`,
one row per image, written and read as row caches (:mod:`cliplens.core.caches.rows`: sharded,
gathered by HDF5 virtual datasets, provenance-checked).

Arrays (rows = images, the cache's dtype): ``/embeddings`` [n, D] =
``encode_image(normalize=False)`` (the model's own output, to check the sum against), and the
terms ``/embed`` [n, D], ``/heads`` [n, Lk, H, D], ``/attn_bias`` [n, Lk, D], ``/mlps`` [n, Lk, D],
``/rest`` [n, D], ``/bias`` [n, D], ``/pool_mlp`` [n, D] (SigLIP), ``/heads_cls`` [n, Lk, H, D]
(CLS-pooled towers), plus ``/index`` and ``/labels``.  Provenance records the kept ``layers``,
``blocks``, ``heads`` and ``kind_decomposition`` (``cls`` or ``attn_pool``).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ...core.caches.rows import RowCache, extract_rows
from ...core.models.base import ClipModel
from ...core.models.blocks import resolve_layers
from .decompose import decompose

#: arrays of a decomposition cache, besides /embeddings (the model's own embedding), /index and
#: /labels; each has one entry per image.
TERM_ARRAYS = ("embed", "heads", "attn_bias", "mlps", "rest", "bias", "pool_mlp", "heads_cls")
#: per-image arrays with a kept-layer axis (axis 1)
PER_LAYER = ("heads", "attn_bias", "mlps", "heads_cls")
#: arrays a tower may not have (SigLIP has no CLS -> CLS part, CLS towers no pooling MLP)
OPTIONAL = ("pool_mlp", "heads_cls", "labels")


def extract_decomposition(
    model: ClipModel,
    dataset,
    out_path: str | os.PathLike,
    *,
    layers: int | Sequence[int] | None = None,
    start: int = 0,
    stop: int | None = None,
    batch_size: int = 64,
    dtype: str = "float32",
    progress: bool = True,
) -> dict:
    """Decompose images ``start .. stop-1`` of ``dataset`` into a decomposition cache (a shard,
    joined by :func:`~cliplens.core.caches.rows.gather_shards` like every row cache), keeping
    ``layers`` (:func:`~cliplens.core.models.blocks.resolve_layers`).  Returns the provenance."""
    n_blocks = model.tower.n_blocks
    kept = list(resolve_layers(layers, n_blocks))

    def compute(pixels):
        dec = decompose(model, pixels, kept)
        out = {"embeddings": model.encode_image(pixels, normalize=False)}
        out.update({k: getattr(dec, k) for k in TERM_ARRAYS if getattr(dec, k) is not None})
        return out

    def describe(arrays):
        return {"heads": int(arrays["heads"].shape[2]),
                "kind_decomposition": "attn_pool" if "pool_mlp" in arrays else "cls"}

    return extract_rows(model, dataset, out_path, compute, kind="decomposition", start=start,
                        stop=stop, batch_size=batch_size, dtype=dtype,
                        provenance={"layers": kept, "blocks": n_blocks}, describe=describe,
                        desc=f"decompose {model.spec}", progress=progress)


def read_decomposition(path: str | os.PathLike, expected: dict | None = None,
                       arrays: Sequence[str] | None = None,
                       layers: Sequence[int] | None = None, sum_heads: bool = False) -> dict:
    """Arrays of a decomposition cache (shard or gathered) as numpy, and ``provenance``;
    refuses an incomplete file, missing shards, or provenance that disagrees with ``expected``
    (e.g. another model).

    ``arrays``: names to load (None = every array; ``index`` is always loaded).  ``layers``:
    positions along the kept-layer axis to load for the per-layer arrays (:data:`PER_LAYER`),
    None = all.  ``sum_heads``: load ``heads`` and ``heads_cls`` summed over heads ([n, Lk, D]),
    one layer at a time, so a cache larger than memory can still be reduced."""
    with RowCache(path, "decomposition", expected) as cache:
        names = list(cache.names)
        if arrays is not None:
            missing = sorted(set(arrays) - set(names) - set(OPTIONAL))
            if missing:
                raise KeyError(f"{path} has no arrays {missing}")
            names = [k for k in names if k in set(arrays) | {"index"}]
        out = {}
        for k in names:  # every read goes through RowCache: checksums, finite, in bounds
            if k not in PER_LAYER:
                out[k] = cache.load(k)
                continue
            pos = range(cache.array(k).shape[1]) if layers is None else list(layers)
            if sum_heads and k in ("heads", "heads_cls"):
                out[k] = np.stack([cache.layers(k, [i])[:, 0].astype(np.float32).sum(1)
                                   for i in pos], axis=1)
            elif layers is None:
                out[k] = cache.load(k)
            else:
                out[k] = cache.layers(k, pos)
        out["provenance"] = cache.provenance
    return out


# ---------------------------------------------------------------------------------------------
# what the study's jobs read back


def read_heads_cache(path: str | os.PathLike, spec: str, **kw) -> dict:
    """:func:`read_decomposition` of a cache that must belong to model ``spec``."""
    return read_decomposition(path, {"model": spec}, **kw)


def rows_of(dec: dict) -> np.ndarray:
    """The dataset rows (int64 [n]) a decomposition read covers."""
    return np.asarray(dec["index"], dtype=np.int64)


#: every term of a decomposition, as the ablation and replacement jobs read them
TERMS = ("heads", "heads_cls", "mlps", "embed", "attn_bias", "rest", "bias", "pool_mlp")


def layer_sums(path: str | os.PathLike, spec: str) -> dict:
    """A cache's terms with the heads summed per layer ([n, Lk, D]), read layer by layer."""
    return read_heads_cache(path, spec, arrays=TERMS, sum_heads=True)


def explained_heads(prov: dict, last: int | None) -> list[tuple[int, int]]:
    """(block index, head) of every head of the last ``last`` kept layers of a cache with
    provenance ``prov`` (None = all kept layers), in layer-then-head order."""
    layers = list(prov["layers"])
    first = 0 if last is None else max(0, len(layers) - int(last))
    return [(layers[i], h) for i in range(first, len(layers)) for h in range(int(prov["heads"]))]


def chosen_heads(textspan_result: dict, listed: Sequence, n: int) -> list[tuple[int, int]]:
    """The (block, head) pairs ``listed`` in the config, or else the ``n`` explained heads with
    the largest direct-effect variance (from the TextSpan job's result)."""
    if listed:
        return [tuple(x) for x in listed]
    ranked = sorted(textspan_result["heads"], key=lambda x: -x["variance"])
    return [(x["layer"], x["head"]) for x in ranked[:n]]


def load_heads(path: str | os.PathLike, spec: str, heads: Sequence[tuple[int, int]]
               ) -> tuple[dict[tuple[int, int], np.ndarray], dict]:
    """The direct effects [n, D] (float64) of the (block, head) pairs ``heads`` of a cache
    (reading only their layers), and the cache's arrays ``index``/``provenance``."""
    from ...core.io import check_provenance

    prov = check_provenance(path, {"model": spec})
    pos = {l: i for i, l in enumerate(prov["layers"])}
    bad = [x for x in heads if x[0] not in pos or not 0 <= x[1] < int(prov["heads"])]
    if bad:
        raise ValueError(f"{path}: heads {bad} are not in the cache (kept layers "
                         f"{prov['layers']}, {prov['heads']} heads each)")
    layers = sorted({pos[l] for l, _ in heads})
    dec = read_heads_cache(path, spec, arrays=("heads",), layers=layers)
    j = {p: k for k, p in enumerate(layers)}
    out = {(l, h): dec["heads"][:, j[pos[l]], h].astype(np.float64) for l, h in heads}
    return out, {"index": dec["index"], "provenance": dec["provenance"]}

