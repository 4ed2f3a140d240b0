"""One subpackage per study; each has its algorithms and a ``jobs.py`` whose ``run_*`` functions
the workflow scripts call: ``inversion`` (000), ``heads`` (001)."""
