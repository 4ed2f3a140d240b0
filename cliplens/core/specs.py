"""Spec strings name models and datasets; slugs make them safe in paths.

Model specs:

* ``open_clip:NAME@PRETRAINED`` -- an open_clip model and pretrained tag, e.g.
  ``open_clip:ViT-B-16@laion2b_s34b_b88k``; ``open_clip:NAME`` alone means random weights.
* ``hf:REPO`` -- a transformers model on the Hugging Face hub, e.g.
  ``hf:google/siglip2-base-patch16-512``.
* ``toy:NAME`` -- a toy model trained by the workflow, e.g. ``toy:clip-vit``.
* ``laclip:NAME`` -- a LaCLIP checkpoint placed by hand at ``{resources}/models/laclip/NAME.pt``,
  e.g. ``laclip:cc3m_laclip`` (:mod:`cliplens.core.models.laclip`).

A slug replaces ``:`` and ``/`` by ``--`` so each spec maps to one directory name and back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEMES = ("open_clip", "hf", "toy", "laclip")
_SLUG_OK = re.compile(r"^[A-Za-z0-9._@+-]+$")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``scheme``, ``name`` and (open_clip only) ``pretrained``."""

    scheme: str
    name: str
    pretrained: str | None = None

    def __str__(self) -> str:
        s = f"{self.scheme}:{self.name}"
        return f"{s}@{self.pretrained}" if self.pretrained else s

    @property
    def slug(self) -> str:
        return slugify(str(self))


def parse_model_spec(spec: str) -> ModelSpec:
    """Parse ``spec`` into a :class:`ModelSpec`; raise ``ValueError`` with the accepted forms."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"bad model spec {spec!r}: expected 'open_clip:NAME@PRETRAINED', 'hf:REPO', "
            f"'toy:NAME' or 'laclip:NAME'"
        )
    scheme, rest = spec.split(":", 1)
    if scheme not in SCHEMES:
        raise ValueError(f"bad model spec {spec!r}: unknown scheme {scheme!r} (one of {SCHEMES})")
    if not rest:
        raise ValueError(f"bad model spec {spec!r}: empty name")
    if scheme == "laclip" and ("/" in rest or "\\" in rest or rest.startswith(".")):
        raise ValueError(f"bad model spec {spec!r}: laclip:NAME names the file "
                         f"{{resources}}/models/laclip/NAME.pt (a file name, no folders)")
    pretrained = None
    if scheme == "open_clip" and "@" in rest:
        rest, pretrained = rest.split("@", 1)
    return ModelSpec(scheme, rest, pretrained)


def slugify(spec: str) -> str:
    """Filesystem-safe, reversible slug of a spec: ``hf:google/x`` -> ``hf--google--x``."""
    if "--" in spec:
        raise ValueError(f"spec {spec!r} contains '--', which slugs reserve")
    slug = spec.replace(":", "--", 1).replace("/", "--")
    if not _SLUG_OK.match(slug):
        raise ValueError(f"spec {spec!r} gives slug {slug!r} with characters unsafe in paths")
    return slug


def unslugify(slug: str) -> str:
    """Inverse of :func:`slugify`."""
    scheme, _, rest = slug.partition("--")
    return f"{scheme}:{rest.replace('--', '/')}"
