# cliplens: five CLIP/SigLIP interpretability studies as one DAG.
# Run on the toy world (default config.yaml):   snakemake --cores 2
# Run on the real models/datasets:             snakemake --cores 8 --configfile configs/paper.yaml
import os

from snakemake.utils import min_version
from snakemake.exceptions import WorkflowError

from cliplens.core.config import ConfigError, check_config_files
from cliplens.core.settings import load_settings, plain

min_version("9.0")

# HDF5's file locks fail or hang on many cluster filesystems (NFS, Lustre) and nothing here needs
# them (outputs are written under a temporary name, then renamed).  Set while the workflow is
# parsed, so every job has it: cluster jobs inherit it (the SLURM executor submits with
# --export=ALL) and read this file again; export HDF5_USE_FILE_LOCKING yourself to override.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


# YAML syntax errors and keys given twice, with their file and line, before Snakemake merges the
# files (it would keep the last of two equal keys without a word).  A --configfile with a syntax
# error stops Snakemake before this file is read: `python -m cliplens.core.settings FILE` names
# the line.
try:
    check_config_files(
        [os.path.join(workflow.basedir, "config.yaml"), *workflow.overwrite_configfiles]
    )
except ConfigError as err:
    raise WorkflowError(str(err))


configfile: os.path.join(workflow.basedir, "config.yaml")


report: "report/workflow.rst"


# The config, validated against cliplens/core/schema/ and typed once (cliplens.core.settings):
# every rules file reads S, and hands each job its own slice as plain values.
try:
    S = load_settings(config)
except ConfigError as err:
    raise WorkflowError(str(err))


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/toy.smk"
include: "rules/caches.smk"
include: "rules/zeroshot.smk"
include: "rules/inversion.smk"
include: "rules/heads.smk"
include: "rules/neurons.smk"
include: "rules/sae.smk"
include: "rules/purity.smk"


rule all:
    input:
        f"{R}/tables/zeroshot/accuracy.csv",
        f"{R}/figures/zeroshot/accuracy.png",
        inversion_outputs(),
        heads_outputs(),
        neurons_outputs(),
        sae_outputs(),
        purity_outputs(),
