"""Models: one registry from a spec string to a loaded CLIP-like model.

See :func:`cliplens.models.registry.load_model` and :class:`cliplens.models.base.ClipModel`.
"""
