"""Study 000, feature inversion: reconstruct images from SigLIP/SigLIP2 patch tokens, score the
reconstructions, and fit colour operators in token space."""
