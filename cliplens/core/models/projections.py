"""What enters a CLIP's image and text projections (study 004 fine-tunes only those layers).

:func:`projections_removed` lifts both projections out of the model for a block, so that
``encode_image`` and ``encode_text`` return their inputs; the projections themselves are read
with :meth:`~cliplens.core.models.towers.VisionTower.image_projection` and
:func:`~cliplens.core.models.towers.text_projection`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .towers import OpenClipViT, tower_of

__all__ = ["projections_removed"]


@contextlib.contextmanager
def projections_removed(model) -> Iterator[None]:
    """Within the block, ``model.encode_image`` and ``model.encode_text`` return the features
    that enter the image and text projections (an open_clip ViT CLIP or a transformers
    ``CLIPModel``), so that ``encode_image(x) = pre_image(x) @ W_image`` and likewise for text
    (:meth:`VisionTower.image_projection`, :func:`text_projection`; neither has a bias).  The
    projections are put back on leaving, even after an error."""
    m = model.model
    if model.library == "open_clip" and isinstance(tower_of(model), OpenClipViT):
        owners = [(m.visual, "proj"), (m, "text_projection")]
        if isinstance(m.text_projection, torch.nn.Linear) and m.text_projection.bias is not None:
            raise NotImplementedError(f"{model.spec}: a text projection with a bias")
        replacement = None
    elif type(m).__name__ == "CLIPModel":
        owners = [(m, "visual_projection"), (m, "text_projection")]
        replacement = torch.nn.Identity()
    else:
        raise NotImplementedError(f"{model.spec}: features before the projections are read "
                                  f"from open_clip ViT CLIPs and transformers CLIPModel only")
    saved = [getattr(o, name) for o, name in owners]
    orders = [list(o._parameters) for o, _ in owners]
    try:
        for o, name in owners:
            if isinstance(o, torch.nn.Module) and name in o._parameters:
                del o._parameters[name]
            setattr(o, name, replacement)
        yield
    finally:
        for (o, name), value, order in zip(owners, saved, orders):
            if isinstance(value, torch.nn.Parameter):
                o._parameters.pop(name, None)
                o.__dict__.pop(name, None)
                o.register_parameter(name, value)
                params = o._parameters  # back in its place: parameters() keeps its order
                o._parameters = type(params)((k, params[k]) for k in order if k in params)
            else:
                setattr(o, name, value)
