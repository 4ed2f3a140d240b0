"""Study 002: sparse autoencoders on CLIP embeddings (``rules/sae.smk`` when built; for now
the SAE variants, :mod:`.variants`)."""
