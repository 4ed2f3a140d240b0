"""One registry from a model spec string to a loaded :class:`~cliplens.core.models.base.ClipModel`.

:func:`load_model` parses the spec (:mod:`cliplens.core.specs`) and calls the loader registered for its
scheme in :data:`LOADERS`; adding a model source is one entry there.

* ``open_clip:NAME@TAG`` -- ``open_clip.create_model_and_transforms(NAME, pretrained=TAG)``; the
  tag's own ``quick_gelu`` flag is forced onto the model (OpenAI weights were trained with
  QuickGELU in both towers, and open_clip 3.3.0 only *warns* when a plain config such as
  ``ViT-B-16`` meets them). ``open_clip:NAME`` alone: random weights.
* ``hf:REPO`` or ``hf:/path`` / ``hf:./path`` -- ``AutoModel`` + ``AutoImageProcessor`` +
  ``AutoTokenizer`` (``CLIPModel``, ``SiglipModel``, ``Siglip2Model``; see
  :mod:`cliplens.core.models.hf_adapter`).
* ``toy:NAME`` -- the directory ``{toy_root}/NAME`` written by the toy training rule:
  ``cliplens_model.json`` (library, family, name, ...) plus either open_clip's ``local-dir:``
  layout (:func:`save_open_clip_dir`) or transformers' ``save_pretrained`` output
  (:func:`save_transformers_dir`). Toy and real models run through the same library code.
* ``laclip:NAME`` -- the LaCLIP checkpoint ``{resources}/models/laclip/NAME.pt``, placed by hand
  (e.g. ``cc3m_laclip.pt`` from https://github.com/LijieFan/LaCLIP), read into open_clip's
  ``CLIP`` by :mod:`cliplens.core.models.laclip`.

Offline behaviour: unless ``allow_download=True``, Hugging Face offline mode is switched on for
the duration of the call (``HF_HUB_OFFLINE=1`` and ``huggingface_hub.constants.HF_HUB_OFFLINE``,
both restored afterwards; not thread-safe) and the cache is checked *before* the library is asked,
so a missing model fails at once with one :class:`ModelUnavailableError` naming the spec, the cache
folder searched and the command that fetches the weights on a machine with network.

``hf_home`` is a Hugging Face home (``HF_HOME``): the hub cache is ``{hf_home}/hub``. A folder
that holds ``models--*`` entries directly (a hub cache itself) is accepted as well. ``None`` uses
the environment's cache (``HF_HOME`` / ``HF_HUB_CACHE``).

Grad mode is left to the caller: wrap pure inference in ``torch.inference_mode()``; training and
pixel-space optimisation need gradients through the encoders. Models are returned in eval mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from ..specs import ModelSpec, parse_model_spec
from .base import ClipModel, ModelUnavailableError
from .storage import (DIGESTS, META_FILE, OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, read_model_meta,
                      sha256_file, verify_digests)

__all__ = ["LOADERS", "ModelUnavailableError", "hub_cache_dir", "load_model", "resolve_device"]

# ---------------------------------------------------------------------------------------------
# devices, caches, offline mode


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; anything else as torch reads it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def hub_cache_dir(hf_home: str | os.PathLike | None) -> Path:
    """The Hugging Face hub cache that ``hf_home`` names (see the module docstring)."""
    if hf_home is None:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    home = Path(hf_home).expanduser()
    if not (home / "hub").is_dir() and any(home.glob("models--*")):
        return home
    return home / "hub"


@contextlib.contextmanager
def _hub_mode(offline: bool) -> Iterator[None]:
    """Switch Hugging Face offline mode on for the block (when ``offline``), then restore it."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    old_env = os.environ.get("HF_HUB_OFFLINE")
    old_const = constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def _cached_file(repo: str, filename: str, cache: Path) -> str | None:
    """Path of ``filename`` of ``repo`` in the hub cache ``cache`` (main revision), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=str(cache))
    return found if isinstance(found, str) else None


@dataclass(frozen=True)
class LoadContext:
    """Everything a loader needs besides the parsed spec."""

    spec: str
    toy_root: Path
    hf_home: str | None
    allow_download: bool
    resources: Path = Path("resources")

    @property
    def hub_cache(self) -> Path:
        return hub_cache_dir(self.hf_home)

    @property
    def cache_dir(self) -> str | None:
        """``cache_dir`` argument for the libraries: None keeps their own default."""
        return None if self.hf_home is None else str(self.hub_cache)

    @property
    def env_prefix(self) -> str:
        """``HF_HOME=... `` to put before a fetch command when a custom home is in use."""
        return f"HF_HOME={shlex.quote(str(Path(self.hf_home).expanduser()))} " if self.hf_home else ""

    def unavailable(self, repo: str, fetch: list[str]) -> ModelUnavailableError:
        """One message: what is missing, where we looked, how to fetch it."""
        cmds = "\n".join(f"    {self.env_prefix}{c}" for c in fetch)
        return ModelUnavailableError(
            f"model {self.spec!r} is not available: the weights of {repo!r} are not in the Hugging "
            f"Face cache {self.hub_cache} and downloads are off (allow_download=False).\n"
            f"Fetch them on a machine with network access:\n{cmds}\n"
            f"then copy {self.hub_cache / ('models--' + repo.replace('/', '--'))} into this "
            f"machine's cache (or set hf_home to where the cache lives)."
        )

# ---------------------------------------------------------------------------------------------
# open_clip


def open_clip_create_kwargs(name: str, pretrained: str | None) -> dict[str, Any]:
    """Keyword arguments for ``open_clip.create_model_and_transforms(name, ...)``.

    Raises ``ValueError`` for an unknown model name or pretrained tag. A tag recorded with
    ``quick_gelu=True`` (every ``openai`` tag, and e.g. ``yfcc15m``/``cc12m``) gets
    ``force_quick_gelu=True``: the weights were trained with QuickGELU in both towers, while a
    plain config such as ``ViT-B-16`` builds exact GELU (``NAME-quickgelu`` configs already have it).
    """
    import open_clip

    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if m.lower().startswith(name.lower()[:4])][:8]
        raise ValueError(f"unknown open_clip model {name!r} (similar: {close})")
    kwargs: dict[str, Any] = {"pretrained": pretrained}
    if pretrained:
        pcfg = open_clip.get_pretrained_cfg(name, pretrained)
        if not pcfg:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ValueError(f"unknown pretrained tag {pretrained!r} for open_clip model {name!r} "
                             f"(known tags: {tags})")
        if pcfg.get("quick_gelu", False):
            kwargs["force_quick_gelu"] = True
    return kwargs


def _open_clip_weights_cached(name: str, pretrained: str, ctx: LoadContext) -> None:
    """Raise :class:`ModelUnavailableError` unless the tag's weights are in the cache."""
    import open_clip
    from open_clip import pretrained as ocp

    pcfg = open_clip.get_pretrained_cfg(name, pretrained)
    if "file" in pcfg:
        return
    hub = pcfg.get("hf_hub", "")
    fetch_py = (f"python -c \"import open_clip; open_clip.create_model_and_transforms("
                f"'{name}', pretrained='{pretrained}')\"")
    if hub:
        repo, filename = os.path.split(hub)  # as open_clip: 'org/repo/' or 'org/repo/file'
        names = [filename or ocp.HF_WEIGHTS_NAME]
        names = list(ocp._get_safe_alternatives(names[0])) + names
        if any(_cached_file(repo, f, ctx.hub_cache) for f in names):
            return
        raise ctx.unavailable(repo, [f"hf download {repo}", fetch_py])
    url = pcfg.get("url", "")
    if url:
        folder = Path(ctx.cache_dir or os.path.expanduser("~/.cache/clip"))
        if (folder / os.path.basename(url)).is_file():
            return
        raise ModelUnavailableError(
            f"model {ctx.spec!r} is not available: {os.path.basename(url)} is not in {folder} and "
            f"downloads are off (allow_download=False). Fetch it on a machine with network access:\n"
            f"    curl -L -o {folder / os.path.basename(url)} {url}\n    or: {fetch_py}"
        )


def _open_clip_family(model: torch.nn.Module) -> str:
    return "siglip" if getattr(model, "logit_bias", None) is not None else "clip"


def _load_open_clip(spec: ModelSpec, ctx: LoadContext) -> ClipModel:
    import open_clip

    from .open_clip_adapter import OpenClipModel

    kwargs = open_clip_create_kwargs(spec.name, spec.pretrained)
    if spec.pretrained and not ctx.allow_download:
        _open_clip_weights_cached(spec.name, spec.pretrained, ctx)
    with _hub_mode(offline=not ctx.allow_download):
        try:
            model, _, transform = open_clip.create_model_and_transforms(
                spec.name, cache_dir=ctx.cache_dir, **kwargs
            )
            tokenizer = open_clip.get_tokenizer(spec.name, cache_dir=ctx.cache_dir)
        except (OSError, RuntimeError) as exc:
            # weights were checked above; what is left to miss is e.g. a hub tokenizer
            if ctx.allow_download or (isinstance(exc, RuntimeError) and "download" not in str(exc)):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelUnavailableError(
                f"model {ctx.spec!r} is not available offline: open_clip could not find a file "
                f"in the Hugging Face cache {ctx.hub_cache} ({first}).\nFetch it on a machine "
                f"with network access:\n    {ctx.env_prefix}python -c \"import open_clip; "
                f"open_clip.create_model_and_transforms('{spec.name}', "
                f"pretrained={spec.pretrained!r}); open_clip.get_tokenizer('{spec.name}')\""
            ) from exc
    model_cfg = open_clip.get_model_config(spec.name)
    quick = bool(model_cfg.get("quick_gelu", False) or kwargs.get("force_quick_gelu", False))
    return OpenClipModel(
        str(spec), model, transform, tokenizer,
        family=_open_clip_family(model),
        embed_dim=int(model_cfg["embed_dim"]),
        extra_provenance={"pretrained": spec.pretrained, "quick_gelu": quick},
    )


def _load_open_clip_dir(spec: str, path: Path, meta: Mapping[str, Any], extra: dict) -> ClipModel:
    """A model saved by :func:`save_open_clip_dir`, through open_clip's ``local-dir:`` schema."""
    import open_clip

    from .open_clip_adapter import OpenClipModel

    ident = "local-dir:" + str(path.resolve())
    with _hub_mode(offline=True):
        model, _, transform = open_clip.create_model_and_transforms(ident)
        tokenizer = open_clip.get_tokenizer(ident)
    with open(path / OPEN_CLIP_CONFIG, encoding="utf-8") as fh:
        model_cfg = json.load(fh)["model_cfg"]
    extra = dict(extra, quick_gelu=bool(model_cfg.get("quick_gelu", False)))
    if "weights_sha256" not in extra and (path / OPEN_CLIP_WEIGHTS).is_file():
        extra["weights_sha256"] = sha256_file(path / OPEN_CLIP_WEIGHTS)
    return OpenClipModel(
        spec, model, transform, tokenizer,
        family=str(meta.get("family") or _open_clip_family(model)),
        embed_dim=int(model_cfg["embed_dim"]),
        extra_provenance=extra,
    )


# ---------------------------------------------------------------------------------------------
# transformers


def _is_local_path(name: str) -> bool:
    return name.startswith(("/", ".", "~"))


def _load_transformers(
    spec: str, source: str | Path, ctx: LoadContext, *, local: bool,
    family: str | None = None, extra: dict | None = None,
) -> ClipModel:
    """``AutoModel`` + ``AutoImageProcessor`` + ``AutoTokenizer`` from a hub repo or a directory.

    The tokenizer and image processor are loaded separately (not ``AutoProcessor``) so a directory
    with a plain ``PreTrainedTokenizerFast`` loads as well. Weights load in float32.
    """
    from transformers import AutoImageProcessor, AutoModel

    from .hf_adapter import HFClipModel

    extra = dict(extra or {})
    offline = local or not ctx.allow_download
    if not local and not ctx.allow_download:
        config = _cached_file(str(source), "config.json", ctx.hub_cache)
        if config is None:
            raise ctx.unavailable(str(source), [f"hf download {source}"])
        extra["revision"] = Path(config).parent.name
    kw: dict[str, Any] = {"local_files_only": offline}
    if not local and ctx.cache_dir is not None:
        kw["cache_dir"] = ctx.cache_dir
    src = str(source)
    with _hub_mode(offline=offline):
        try:
            model = AutoModel.from_pretrained(src, dtype=torch.float32, **kw)
            image_processor = AutoImageProcessor.from_pretrained(src, **kw)
            tokenizer = _load_tokenizer(src, kw)
        except OSError as exc:
            if local or ctx.allow_download:
                raise
            raise ctx.unavailable(src, [f"hf download {src}"]) from exc
    return HFClipModel(spec, model, image_processor, tokenizer, family=family, extra_provenance=extra)


#: tokenizer classes that mean "just the tokenizer.json, no model-specific behaviour"
_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _load_tokenizer(src: str, kw: dict[str, Any]):
    """``AutoTokenizer``, except for a tokenizer saved as a plain ``PreTrainedTokenizerFast``
    (toy models): transformers 5 would swap in the model type's own class (e.g.
    ``Siglip2Tokenizer``, which pads on the left and lower-cases), so that one loads as it was saved.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    declared = get_tokenizer_config(src, **kw).get("tokenizer_class")
    if declared in _GENERIC_TOKENIZERS:
        return PreTrainedTokenizerFast.from_pretrained(src, **kw)
    return AutoTokenizer.from_pretrained(src, **kw)


def _load_hf(spec: ModelSpec, ctx: LoadContext) -> ClipModel:
    name = spec.name
    if _is_local_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ModelUnavailableError(f"model {ctx.spec!r}: directory {path} does not exist")
        return _load_transformers(str(spec), path, ctx, local=True)
    return _load_transformers(str(spec), name, ctx, local=False)


# ---------------------------------------------------------------------------------------------
# toy models


def _load_toy(spec: ModelSpec, ctx: LoadContext) -> ClipModel:
    path = ctx.toy_root / spec.name
    rule = f"snakemake {ctx.toy_root / spec.name}"
    if not path.is_dir():
        raise ModelUnavailableError(
            f"toy model {ctx.spec!r} is not built: {path} does not exist. "
            f"The toy training rule builds it: run `{rule}` (or the target that needs it)."
        )
    if not (path / META_FILE).is_file():
        raise ModelUnavailableError(
            f"toy model {ctx.spec!r} is incomplete: {path / META_FILE} is missing. "
            f"Rebuild it with `{rule} --forcerun`."
        )
    meta = read_model_meta(path)
    library, family = meta.get("library"), meta.get("family")
    # every file is checked against the digests recorded at save (CorruptFileError naming the
    # file); the weights' hash (not the training log) identifies a toy model's outputs
    digests = verify_digests(path, meta.get(DIGESTS, {}), what=f"toy model {spec.name}")
    weights = OPEN_CLIP_WEIGHTS if library == "open_clip" else "model.safetensors"
    extra = {"toy": str(meta.get("name", spec.name))}
    if weights in digests:
        extra["weights_sha256"] = digests[weights]
    elif (path / weights).is_file():  # a model saved before digests were recorded
        extra["weights_sha256"] = sha256_file(path / weights)
    if library == "open_clip":
        return _load_open_clip_dir(str(spec), path, meta, extra)
    if library == "transformers":
        return _load_transformers(str(spec), path, ctx, local=True, family=family, extra=extra)
    raise ValueError(f"{path / META_FILE}: library {library!r} is not open_clip or transformers")


# ---------------------------------------------------------------------------------------------
# checkpoints placed by hand

LACLIP_URL = "https://github.com/LijieFan/LaCLIP"


def laclip_path(resources: str | Path, name: str) -> Path:
    """Where the checkpoint of ``laclip:NAME`` is placed: ``{resources}/models/laclip/NAME.pt``."""
    return Path(resources) / "models" / "laclip" / f"{name}.pt"


def _load_laclip(spec: ModelSpec, ctx: LoadContext) -> ClipModel:
    from .laclip import load_laclip

    path = laclip_path(ctx.resources, spec.name)
    if not path.is_file():
        raise ModelUnavailableError(
            f"model {ctx.spec!r} is not available: {path} does not exist. LaCLIP checkpoints "
            f"are placed by hand: download {spec.name}.pt from {LACLIP_URL} (\"Pre-trained "
            f"models\"; e.g. cc3m_laclip.pt / cc3m_clip.pt, ViT-B/16 trained on CC3M with "
            f"rewritten / original captions) and place it at {path}."
        )
    return load_laclip(str(spec), path)


# ---------------------------------------------------------------------------------------------
# the registry

#: scheme -> loader(parsed spec, context); adding a model source is one entry
LOADERS: dict[str, Callable[[ModelSpec, LoadContext], ClipModel]] = {
    "open_clip": _load_open_clip,
    "hf": _load_hf,
    "toy": _load_toy,
    "laclip": _load_laclip,
}


def load_model(
    spec: str,
    *,
    toy_root: str | Path = "results/models/toy",
    device: str = "cpu",
    hf_home: str | None = None,
    allow_download: bool = False,
    resources: str | Path = "resources",
) -> ClipModel:
    """Load the model ``spec`` names and move it to ``device`` (``"auto"``: cuda if available).

    Raises ``ValueError`` for a malformed spec, an unknown scheme, model name or pretrained tag;
    :class:`ModelUnavailableError` when the weights (or a toy model's directory) are not on this
    machine. ``resources`` is the root of hand-placed files (``laclip:NAME`` reads
    ``{resources}/models/laclip/NAME.pt``). The returned model is in eval mode; grad mode is the
    caller's.
    """
    parsed = parse_model_spec(spec)
    if parsed.scheme not in LOADERS:
        raise ValueError(f"bad model spec {spec!r}: no loader for scheme {parsed.scheme!r} "
                         f"(registered: {sorted(LOADERS)})")
    ctx = LoadContext(spec=spec, toy_root=Path(toy_root), hf_home=hf_home,
                      allow_download=allow_download, resources=Path(resources))
    model = LOADERS[parsed.scheme](parsed, ctx)
    return model.to(resolve_device(device))
