"""Study 000's names, light enough for the workflow to read while it plans (no torch):
the colour-operator tasks and their image views, the operator kinds, and each extractor's group
in the SigLIP-vs-SigLIP2 comparison."""

from __future__ import annotations

from typing import Mapping

from ...core.data.views import VIEW_KEYS  # noqa: F401  (the views the tasks name)

#: operator kinds (:func:`.operators.fit_operator`)
OPERATOR_KINDS = ("procrustes", "symmetric", "linear", "affine")

#: colour-operator task -> (source image view, target image view, title); the views are the
#: image arrays of toy-colour-ops (:data:`VIEW_KEYS`)
OPERATOR_TASKS = {
    "rb_swap": ("images", "images_rb_swap", "R<->B channel swap"),
    "b_suppression": ("images", "images_b_suppressed", "blue-channel suppression"),
    "colorization": ("images_gray", "images", "colourisation (grayscale -> colour)"),
}


def extractor_group(spec: str, family: str | None = None,
                    groups: Mapping[str, str] | None = None) -> str:
    """Label of an extractor in the comparison: ``groups[spec]`` if given, else ``SigLIP2`` when
    the spec names siglip2 (``hf:google/siglip2-base-patch16-512`` is a ``SiglipModel`` whose
    family reads ``siglip``), ``SigLIP`` for other SigLIPs, else the family or spec."""
    if groups and spec in groups:
        return str(groups[spec])
    low = spec.lower()
    if "siglip2" in low or family == "siglip2":
        return "SigLIP2"
    if "siglip" in low or family == "siglip":
        return "SigLIP"
    return family or spec
