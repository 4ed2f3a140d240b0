"""cliplens: CLIP/SigLIP interpretability studies as one reproducible workflow.

``cliplens.core`` is what every study stands on (config and settings, models and their towers,
datasets, the toy world, row caches, text sets and zero-shot classifiers, training loop,
statistics, figures); ``cliplens.studies.<study>`` holds each study's algorithms and its
``jobs.py``.  Nothing here imports snakemake, so every function is usable from a notebook; the
rules in ``rules/`` and the thin scripts in ``workflow_scripts/`` only wire them to files.
"""

__version__ = "0.1.0"
