"""Datasets: the registry (:mod:`.registry`), the catalog of downloads (:mod:`.catalog`), views,
zero-shot tasks (:mod:`.tasks`) and the toy world's HDF5 files (:mod:`.toy`)."""
