"""Study 003's stores: per image, every unit's effect on the embedding, as a row cache.

Every store also holds the model's ``/embeddings`` [N, D].

* CLIP ResNets (pairs): ``/scalars`` [N, H, C] -- the pair scalars s (:mod:`.pairs`); the
  directions u [H, C, D] are the weights', rebuilt by whoever reads the store, so the store is
  N H C numbers instead of the published N H C D;
* class-token ViTs (neurons of one block): ``/exact`` and ``/published`` [N, n_neurons, D] --
  both variants of :mod:`.second_order`.

Written in shards by the core's one row writer (:func:`~cliplens.core.caches.rows.extract_rows`)
and joined like every row cache; read back in blocks aligned to the HDF5 chunks
(:func:`store_blocks`), so a pass over the store holds one block in memory.
"""

from __future__ import annotations

import os

import numpy as np

from ...core.caches.rows import RowCache, extract_rows
from ...core.models.base import ClipModel
from .components import Blocks
from .pairs import decompose_pairs
from .second_order import exact_effects, neuron_block, published_effects, record_neurons

KIND = "neurons"
VARIANTS = ("exact", "published")


def unit_kind(model: ClipModel) -> str:
    """``"pairs"`` for a CLIP ResNet attention pool, ``"neurons"`` for a class-token ViT;
    NotImplementedError naming the model otherwise."""
    pooling = model.tower.pooling
    if pooling == "attn_pool2d":
        return "pairs"
    if pooling == "cls":
        return "neurons"
    raise NotImplementedError(
        f"{model.spec}: study 003 needs a CLIP ResNet with attention pooling (pairs) or a "
        f"class-token ViT (neurons); its tower pools with {pooling!r} "
        f"({type(model.tower.module).__name__})")


def unit_arrays(model: ClipModel, layer: int):
    """The function a store row is computed with, pixels [B, 3, S, S] -> {name: [B, ...]}:
    pair ``scalars`` (CLIP ResNets) or both neuron variants of block ``layer`` (ViTs), and the
    model's own ``embeddings`` [B, D] (what the units and the rest add up to)."""
    if unit_kind(model) == "pairs":
        def compute(pixels):
            return {"scalars": decompose_pairs(model, pixels).scalars,
                    "embeddings": model.encode_image(pixels)}
        return compute
    block = neuron_block(layer, model.tower.n_blocks, model.spec)
    if block == model.tower.n_blocks - 1:
        raise ValueError(f"{model.spec}: block {layer} is the last; its neurons have no later "
                         "attention layer to pass through")

    def compute(pixels):
        rec = record_neurons(model, pixels, block)
        return {"exact": exact_effects(model, rec), "published": published_effects(model, rec),
                "embeddings": rec.embedding}
    return compute


def streamed_blocks(model: ClipModel, dataset, name: str, layer: int,
                    batch_size: int = 32) -> Blocks:
    """The streaming path: a :data:`~.components.Blocks` that recomputes array ``name`` of
    every image of ``dataset`` batch by batch on each pass, so the components need no store
    (two model passes instead of one pass and two reads)."""
    import torch

    compute = unit_arrays(model, layer)

    def gen():
        with torch.inference_mode():
            for a in range(0, len(dataset), batch_size):
                b = min(len(dataset), a + batch_size)
                px = model.preprocess(dataset.images(a, b)).to(model.device)
                yield a, compute(px)[name].double().cpu().numpy()
    return gen


def extract_store(model: ClipModel, dataset, out_path: str | os.PathLike, *, layer: int,
                  start: int = 0, stop: int | None = None, batch_size: int = 32,
                  dtype: str = "float32", progress: bool = True) -> dict:
    """Rows ``start .. stop-1`` of ``dataset`` into a store shard (module docstring); ``layer``
    is the ViT block whose neurons are followed (ignored for pairs).  Returns the provenance."""
    kind = unit_kind(model)
    compute = unit_arrays(model, layer)
    extra = {"units": kind}
    if kind == "neurons":
        extra.update(layer=neuron_block(layer, model.tower.n_blocks, model.spec),
                     blocks=model.tower.n_blocks)
    return extract_rows(model, dataset, out_path, compute, kind=KIND, start=start, stop=stop,
                        batch_size=batch_size, dtype=dtype, provenance=extra,
                        desc=f"{kind} of {model.spec}", progress=progress)


def store_blocks(cache: RowCache, name: str, block_rows: int | None = None,
                 progress: bool = True) -> Blocks:
    """A pass over ``name`` of an open store in blocks of ``block_rows`` rows (None: the HDF5
    chunk's rows, taken from the first shard of a gathered store); each block's values are
    checked like every cache read.  Each pass shows a progress bar (``progress``)."""
    block_rows = block_rows or cache.chunk_rows(name)
    n = len(cache)

    def gen():
        from tqdm import tqdm

        with tqdm(total=n, unit="img", desc=f"pass over {name}", disable=not progress,
                  mininterval=2.0) as bar:
            for a in range(0, n, block_rows):
                b = min(n, a + block_rows)
                yield a, np.asarray(cache.read(name, np.arange(a, b)), dtype=np.float64)
                bar.update(b - a)
    return gen
