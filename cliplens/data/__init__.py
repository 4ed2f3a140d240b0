"""Datasets: the toy world's HDF5 files and (see :mod:`cliplens.data.registry`) the real ones."""
