"""cliplens: CLIP/SigLIP interpretability studies as one reproducible workflow.

The package holds every algorithm; nothing here imports snakemake, so each function is usable
from a notebook.  The Snakemake rules in ``rules/`` and the thin scripts in ``workflow_scripts/``
only wire these functions to files.
"""

__version__ = "0.1.0"
