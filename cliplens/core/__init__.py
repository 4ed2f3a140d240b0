"""What every study stands on: config and typed settings, specs, io, run logs, the training
loop, statistics, figures, and the subpackages ``models`` (registry, adapters, towers), ``data``,
``toy``, ``caches`` and ``text``."""
