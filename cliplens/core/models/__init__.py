"""Models: one registry from a spec string to a loaded model (:func:`.registry.load_model`), the
:class:`.base.ClipModel` interface, and the vision towers' internals (:mod:`.towers`)."""
