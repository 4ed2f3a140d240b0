"""Token-grid caches: the patch tokens of one vision-tower layer, per image, in HDF5.

Which tokens
------------
``layer`` counts like transformers' ``hidden_states``: ``0`` is the input of the first block
(patch + position embeddings; after ``ln_pre`` in open_clip), ``k`` the output of block ``k``
(1-based), negative values count from the end, so ``-1`` is the output of the last block (before
any final LayerNorm) and the default ``-2`` the output after the second-to-last block -- for a
12-block SigLIP exactly ``vision_model(..., output_hidden_states=True).hidden_states[-2]``, the
feature of study 000.  Only patch tokens are kept (open_clip's and CLIP's class token and any other
prefix token are dropped; NaFlex padding is dropped), in the row-major order of the patch grid:
a cache row is [P, D] with P = gh * gw.  Tokens are stored as computed (not L2-normalised); the
reconstructor normalises them where it consumes them.

The tokens are read with a forward hook on the block (:attr:`ClipModel.vision_blocks`) whose
output is wanted; the hook stops the forward pass there, so later blocks and heads never run.

Files
-----
A token cache has the layout of :mod:`cliplens.cache`'s embedding caches, with the row array
``/embeddings`` holding token grids [n, P, D] instead of vectors [n, D] (so the shard/gather
machinery, :func:`cliplens.cache.gather_shards`, and the source checks apply unchanged),
``/index`` and, where the dataset has labels, ``/labels``.  Provenance: the model's (spec,
preprocessing, weights hash, ...), the dataset's (name, split, n, image_key), ``kind: tokens``,
``layer`` (as asked), ``block`` (hidden-state index it resolved to), ``grid`` [gh, gw],
``token_dim``, ``dtype``, the row range and library versions.

Naming (see ``rules/inversion.smk``)::

    {results}/cache/{model}/{dataset}/{split}/tokens/{image_key}.layer{layer}.{rows}.h5
    {results}/cache/{model}/{dataset}/{split}/tokens/shards/
        {image_key}.layer{layer}.{rows}.{i}-of-{n}.h5

``image_key`` picks the image view: ``images`` or, for study 000's colour operators,
``images_rb_swap``, ``images_b_suppressed``, ``images_gray`` (stored arrays of ``toy-colour-ops``;
for other datasets the same transforms of :mod:`cliplens.toyworld` are applied on the fly);
``rows`` is ``all`` or a number N (the first N images of the split).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import toyworld
from .cache import (
    _check_sources,
    _create_rows,
    batch_bounds,
    checked_rows,
    gather_shards,
    prefetched_batches,
)
from .data.base import ImageDataset
from .io import (
    ProvenanceError,
    atomic_path,
    check_provenance,
    library_versions,
    mark_complete,
    set_provenance,
)
from .models.base import ClipModel

#: the row array of a token cache (shared with cliplens.cache so gather_shards applies)
ROW_KEY = "embeddings"
#: image views; every key but "images" is a colour transform of study 000
VIEW_KEYS = ("images", "images_rb_swap", "images_b_suppressed", "images_gray")


# ---------------------------------------------------------------------------------------------
# image views


class TransformedView(ImageDataset):
    """``base`` with a colour transform applied to every image (R<->B swap, blue suppression or
    grayscale, as :func:`cliplens.toyworld.colour_ops` computes them for the toy world)."""

    def __init__(self, base: ImageDataset, image_key: str, blue_factor: float = 0.0):
        if image_key not in VIEW_KEYS[1:]:
            raise ValueError(f"unknown image view {image_key!r}; one of {VIEW_KEYS}")
        self.base, self.image_key, self.blue_factor = base, image_key, float(blue_factor)
        self.name, self.split = base.name, base.split
        self.labels, self.classnames = base.labels, base.classnames

    def __len__(self) -> int:
        return len(self.base)

    def _apply(self, arr: np.ndarray) -> np.ndarray:
        if self.image_key == "images_rb_swap":
            return toyworld.rb_swap(arr)
        if self.image_key == "images_b_suppressed":
            return toyworld.suppress_blue(arr, self.blue_factor)
        return toyworld.grayscale(arr)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self._apply(np.asarray(self.base.image(i).convert("RGB"))))

    def describe(self) -> dict:
        out = {**self.base.describe(), "image_key": self.image_key}
        if self.image_key == "images_b_suppressed":
            out["blue_factor"] = self.blue_factor
        return out


class FirstRows(ImageDataset):
    """The first ``n`` images of ``base`` (all if it has fewer)."""

    def __init__(self, base: ImageDataset, n: int):
        self.base, self.n = base, min(int(n), len(base))
        self.name, self.split = base.name, base.split
        self.labels = None if base.labels is None else np.asarray(base.labels)[: self.n]
        self.classnames = base.classnames

    def __len__(self) -> int:
        return self.n

    def image(self, i: int) -> Image.Image:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.base.image(i)

    def images(self, start: int, stop: int) -> list[Image.Image]:
        return self.base.images(start, min(stop, self.n))

    def describe(self) -> dict:
        return {**self.base.describe(), "n": self.n, "of_n": len(self.base)}


def parse_rows(rows: str | int | None) -> int | None:
    """``"all"``/None -> None; ``"500"``/500 -> 500."""
    if rows is None or rows == "all":
        return None
    n = int(rows)
    if n < 1:
        raise ValueError(f"rows must be 'all' or a positive number, got {rows!r}")
    return n


def open_view(
    name: str,
    split: str,
    *,
    results: str | os.PathLike,
    resources: str | os.PathLike,
    image_key: str = "images",
    rows: str | int | None = None,
    blue_factor: float = 0.0,
) -> ImageDataset:
    """Dataset ``name``/``split`` seen through ``image_key`` (a stored array of a toy dataset,
    else the colour transform on the fly), cut to the first ``rows`` images."""
    from .data.registry import TOY_DATASETS, open_dataset

    if image_key not in VIEW_KEYS:
        raise ValueError(f"unknown image view {image_key!r}; one of {VIEW_KEYS}")
    if name in TOY_DATASETS:
        try:
            ds = open_dataset(name, split, results=results, resources=resources,
                              image_key=image_key)
        except KeyError:
            if image_key == "images":
                raise
            base = open_dataset(name, split, results=results, resources=resources)
            ds = TransformedView(base, image_key, blue_factor)
    else:
        ds = open_dataset(name, split, results=results, resources=resources)
        if image_key != "images":
            ds = TransformedView(ds, image_key, blue_factor)
    n = parse_rows(rows)
    return ds if n is None else FirstRows(ds, n)


# ---------------------------------------------------------------------------------------------
# tokens of a layer


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once the tokens are in hand."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value


def resolve_layer(layer: int, n_blocks: int) -> int:
    """Hidden-state index ``layer`` (negative from the end) -> 0 .. n_blocks."""
    idx = layer if layer >= 0 else n_blocks + 1 + layer
    if not 0 <= idx <= n_blocks:
        raise ValueError(f"layer {layer} is outside the {n_blocks + 1} hidden states "
                         f"(-{n_blocks + 1} .. {n_blocks}) of a {n_blocks}-block tower")
    return idx


def patch_size(model: ClipModel) -> int:
    """The vision tower's patch side in pixels (ViTs only)."""
    if model.library == "transformers":
        return int(model.model.config.vision_config.patch_size)
    visual = model.model.visual
    ps = getattr(visual, "patch_size", None)
    if ps is None:
        raise TypeError(f"{model.spec}: {type(visual).__name__} has no patch grid (token caches "
                        "need a ViT)")
    ps = ps if isinstance(ps, (tuple, list)) else (ps, ps)
    if ps[0] != ps[1]:
        raise ValueError(f"{model.spec}: non-square patches {tuple(ps)}")
    return int(ps[0])


def token_grid(model: ClipModel) -> tuple[int, int]:
    """(gh, gw) of the patch grid for the model's square input."""
    p = patch_size(model)
    if model.image_size % p:
        raise ValueError(f"{model.spec}: image size {model.image_size} is not a multiple of the "
                         f"patch size {p}")
    g = model.image_size // p
    return g, g


def _run_tower(model: ClipModel, pixels: torch.Tensor) -> None:
    """Run the vision tower's forward (stopped by the hook)."""
    if model.library == "transformers":
        vm = model.model.vision_model
        pixels = pixels.to(model.device, dtype=model.model.dtype)
        if getattr(model, "naflex", False):
            vm(**model.naflex_inputs(pixels))
        else:
            vm(pixel_values=pixels)
    elif model.library == "open_clip":
        visual = model.model.visual
        visual(pixels.to(model.device, dtype=next(visual.parameters()).dtype))
    else:  # pragma: no cover
        raise TypeError(f"{model.spec}: unsupported library {model.library!r}")


def encode_tokens(model: ClipModel, pixels: torch.Tensor, layer: int = -2) -> torch.Tensor:
    """Patch tokens [B, P, D] of hidden state ``layer`` for pixels [B, 3, S, S] (float32).

    Grad mode is the caller's.  Prefix tokens (class token, registers) are the first
    ``T - P`` tokens of a sequence of ``T`` and are dropped; NaFlex sequences keep the real patches
    first and padding after, so the first P tokens are kept.
    """
    blocks = list(model.vision_blocks)
    idx = resolve_layer(int(layer), len(blocks))
    gh, gw = token_grid(model)
    P = gh * gw

    def grab(out):
        return out[0] if isinstance(out, (tuple, list)) else out

    if idx == 0:
        def pre_hook(_mod, args, kwargs):
            raise _Captured(args[0] if args else kwargs["hidden_states"])
        handle = blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        def hook(_mod, _args, out):
            raise _Captured(grab(out))
        handle = blocks[idx - 1].register_forward_hook(hook)
    try:
        _run_tower(model, pixels)
    except _Captured as cap:
        x = cap.value
    else:  # pragma: no cover - the hooked block always runs
        raise RuntimeError(f"{model.spec}: block {idx} never ran")
    finally:
        handle.remove()
    if x.ndim != 3:
        raise RuntimeError(f"{model.spec}: block output has shape {tuple(x.shape)}, "
                           "expected [B, T, D]")
    if x.shape[0] != pixels.shape[0] and x.shape[1] == pixels.shape[0]:
        x = x.transpose(0, 1)  # sequence-first towers
    T = x.shape[1]
    if T < P:
        raise RuntimeError(f"{model.spec}: {T} tokens < {P} patches")
    x = x[:, :P] if getattr(model, "naflex", False) else x[:, T - P:]
    return x.float()


# ---------------------------------------------------------------------------------------------
# caches


def extract_tokens(
    model: ClipModel,
    dataset: ImageDataset,
    out_path: str | os.PathLike,
    *,
    layer: int = -2,
    start: int = 0,
    stop: int | None = None,
    batch_size: int = 64,
    dtype: str = "float16",
    progress: bool = True,
) -> dict[str, Any]:
    """Token grids of images ``start .. stop-1`` of ``dataset`` into an HDF5 cache.

    For each batch ``[a, b)`` (cut on the global grid of multiples of ``batch_size``, as
    :func:`cliplens.cache.extract_embeddings`, so shards repeat the unsharded run's batches):
    ``x = model.preprocess(dataset.images(a, b))`` [B, 3, S, S], ``t = encode_tokens(model, x,
    layer)`` [B, P, D] written to rows ``a-start .. b-start`` of ``/embeddings`` [stop-start, P, D]
    (``dtype``).  The next batch is loaded in a background thread.  Written under a temporary name
    and renamed; completion mark last.  Returns the provenance.
    """
    total = len(dataset)
    stop = checked_rows(start, stop, total, dtype)
    n = stop - start
    blocks = len(list(model.vision_blocks))
    gh, gw = token_grid(model)
    provenance = {
        **model.provenance(),
        **dataset.describe(),
        "kind": "tokens",
        "layer": int(layer),
        "block": resolve_layer(int(layer), blocks),
        "blocks": blocks,
        "grid": [gh, gw],
        "dtype": dtype,
        "start": int(start),
        "stop": int(stop),
        "rows": int(n),
        "library_versions": library_versions(),
    }
    labels = getattr(dataset, "labels", None)
    bounds = batch_bounds(start, stop, batch_size)

    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as h5:
        arr = None
        if n == 0:  # shape unknown without a forward pass: run one on a blank image
            probe = model.preprocess([Image.new("RGB", (model.image_size,) * 2)])
            with torch.inference_mode():
                d = encode_tokens(model, probe, layer).shape[-1]
            arr = _create_rows(h5, ROW_KEY, (0, gh * gw, d), dtype)
        h5.create_dataset("index", data=np.arange(start, stop, dtype=np.int64))
        if labels is not None:
            h5.create_dataset("labels", data=np.asarray(labels)[start:stop].astype(np.int64))
        bar = tqdm(total=n, unit="img", desc=f"tokens {provenance.get('model')}",
                   disable=not progress, mininterval=2.0)
        with torch.inference_mode():
            for (a, b), pixels in prefetched_batches(dataset, model, bounds):
                tok = encode_tokens(model, pixels, layer)
                if arr is None:
                    arr = _create_rows(h5, ROW_KEY, (n,) + tuple(tok.shape[1:]), dtype,
                                       fill=np.nan)
                    provenance["token_dim"] = int(tok.shape[-1])
                arr[a - start:b - start] = tok.cpu().numpy().astype(dtype)
                bar.update(b - a)
        bar.close()
        provenance.setdefault("token_dim", int(arr.shape[-1]))
        set_provenance(h5, provenance)
        mark_complete(h5)
    return provenance


def gather_token_shards(shard_paths: Sequence[str | os.PathLike],
                        out_path: str | os.PathLike) -> dict[str, Any]:
    """Join token shards into one cache of HDF5 virtual datasets
    (:func:`cliplens.cache.gather_shards`, which keeps the trailing [P, D] shape)."""
    return gather_shards(shard_paths, out_path)


class TokenCache:
    """A token cache opened for reading: ``len``, ``shape`` [n, P, D], ``grid``, ``provenance``,
    ``read(rows)`` -> float32 [len(rows), P, D] (any order, duplicates allowed) and ``load()``
    (everything, in the stored dtype).  Use as a context manager or call ``close()``."""

    def __init__(self, path: str | os.PathLike, expected: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.provenance = check_provenance(self.path, expected or {})
        if self.provenance.get("kind") != "tokens":
            raise ProvenanceError(f"{self.path} holds {self.provenance.get('kind')!r}, "
                                  "not tokens")
        self._h5 = h5py.File(self.path, "r")
        _check_sources(self.path, self._h5)
        self._ds = self._h5[ROW_KEY]
        self.shape = tuple(self._ds.shape)
        self.grid = tuple(self.provenance["grid"])
        self._mem: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def load(self) -> np.ndarray:
        """All rows [n, P, D] in memory (kept for later ``read`` calls)."""
        if self._mem is None:
            self._mem = self._ds[()]
        return self._mem

    def read(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if self._mem is not None:
            out = self._mem[rows]
        elif len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            out = self._ds[int(rows[0]):int(rows[0]) + len(rows)]  # contiguous: one slice read
        else:
            uniq, inv = np.unique(rows, return_inverse=True)  # h5py wants increasing indices
            out = self._ds[uniq][inv]
        return out.astype(np.float32)

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "TokenCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_tokens(path: str | os.PathLike, expected: Mapping[str, Any] | None = None) -> TokenCache:
    """Open a token cache (refusing incomplete files, missing shards and provenance that
    disagrees with ``expected``)."""
    return TokenCache(path, expected)


def read_tokens(path: str | os.PathLike, expected: Mapping[str, Any] | None = None
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """(tokens [n, P, D] in the stored dtype, provenance) of a whole cache."""
    with open_tokens(path, expected) as tc:
        return tc.load(), tc.provenance
