"""How models are stored on disk by cliplens: the toy model directories (open_clip's
``local-dir:`` layout or transformers' ``save_pretrained`` output, plus ``cliplens_model.json``)
and the weights' hash that identifies a model's outputs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from ..io import (
    apply_umask_modes,
    atomic_path,
    corrupt,
    rebuild_hint,
    sha256_file,
    write_json_atomic,
)


class _DefaultSiglipTextConfigNoise(logging.Filter):
    """Drops one transformers warning that is about transformers' own defaults, not about the
    model at hand: whenever a config is printed or saved, transformers builds a default
    ``SiglipTextConfig()`` to diff against, whose defaults (vocabulary 32,000, bos/eos ids
    49406/49407) fail its own token-id check, and warns once per process.  Every other warning
    passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("must be `None` or an integer within the vocabulary (between 0 and 31999), "
                    "got 4940" in msg and msg.split("got ", 1)[1][:5] in ("49406", "49407"))


def quiet_default_config_noise() -> None:
    """Install :class:`_DefaultSiglipTextConfigNoise` on transformers' config logger (once)."""
    logger = logging.getLogger("transformers.configuration_utils")
    if not any(isinstance(f, _DefaultSiglipTextConfigNoise) for f in logger.filters):
        logger.addFilter(_DefaultSiglipTextConfigNoise())


quiet_default_config_noise()

#: metadata file every toy model directory holds
META_FILE = "cliplens_model.json"
#: open_clip's ``local-dir:`` schema reads these two files
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


def write_model_meta(path: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """Write ``{path}/cliplens_model.json`` (atomically).

    Write it *last*: the loader takes a directory without it for an unfinished one.
    ``meta`` must hold ``library`` (``"open_clip"`` or ``"transformers"``), ``family``
    (``"clip"``, ``"siglip"`` or ``"siglip2"``) and ``name``; any further keys (training
    settings, accuracies, ...) are kept as they are.
    """
    missing = [k for k in ("library", "family", "name") if k not in meta]
    if missing:
        raise ValueError(f"model metadata lacks {missing} (needs library, family, name)")
    if meta["library"] not in ("open_clip", "transformers"):
        raise ValueError(f"model metadata: library {meta['library']!r} is not open_clip or transformers")
    if meta["family"] not in ("clip", "siglip", "siglip2"):
        raise ValueError(f"model metadata: family {meta['family']!r} is not clip, siglip or siglip2")
    Path(path).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(path) / META_FILE, dict(meta))


def save_open_clip_dir(
    model: torch.nn.Module,
    model_cfg: Mapping[str, Any],
    preprocess_cfg: Mapping[str, Any],
    path: str | os.PathLike,
) -> Path:
    """Save an open_clip model in the layout open_clip's ``local-dir:`` schema loads.

    Writes ``open_clip_config.json`` = ``{"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}``
    and ``open_clip_model.safetensors`` (the state dict) into ``path``; load it back with
    ``open_clip.create_model_and_transforms("local-dir:" + path)``. ``model_cfg`` is the dict the
    model was built from (``embed_dim``, ``vision_cfg``, ``text_cfg``, ``quick_gelu``, ...);
    ``preprocess_cfg`` holds e.g. ``size``, ``mean``, ``std``, ``interpolation``, ``resize_mode``.
    Files are written to temporary names and renamed into place.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        path / OPEN_CLIP_CONFIG,
        {"model_cfg": dict(model_cfg), "preprocess_cfg": dict(preprocess_cfg)},
    )
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path / OPEN_CLIP_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    return path


def save_transformers_dir(model, image_processor, tokenizer, path: str | os.PathLike) -> Path:
    """Save a transformers model, its image processor and its tokenizer with ``save_pretrained``
    into ``path`` (the layout ``hf:`` and ``toy:`` load). Written into a temporary sibling
    directory first, then moved file by file into ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        model.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        apply_umask_modes(tmp)
        for f in tmp.iterdir():
            os.replace(f, path / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_model_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``{path}/cliplens_model.json``."""
    with open(Path(path) / META_FILE, encoding="utf-8") as fh:
        return json.load(fh)


#: the metadata key recording, at save, the SHA-256 of every file of a model directory
DIGESTS = "files_sha256"


def file_digests(path: str | os.PathLike, skip: tuple[str, ...] = (META_FILE,)
                 ) -> dict[str, str]:
    """``{relative name: SHA-256}`` of every file under directory ``path`` but ``skip``."""
    path = Path(path)
    return {str(f.relative_to(path)): sha256_file(f) for f in sorted(path.rglob("*"))
            if f.is_file() and f.name not in skip}


def verify_digests(path: str | os.PathLike, recorded: Mapping[str, str], what: str = "model"
                   ) -> dict[str, str]:
    """Hash each file ``recorded`` names under ``path`` and compare; return the digests.

    A missing file or a different SHA-256 (a flipped bit, a truncated copy, an edited config)
    raises :class:`~cliplens.core.io.CorruptFileError` naming the file, both digests and the
    command that rebuilds ``path``."""
    path = Path(path)
    seen = {}
    for name, want in sorted(recorded.items()):
        f = path / name
        if not f.is_file():
            raise corrupt(path, f"{what} file {name} is missing", rebuild_hint(path))
        seen[name] = got = sha256_file(f)
        if got != want:
            raise corrupt(f, f"its SHA-256 is {got}, but the {what} was saved with {want} "
                             "(changed after it was written)", rebuild_hint(path))
    return seen
