"""Study 004: feature purity of CLIP projection layers (``rules/purity.smk``)."""
