"""Study 001, per-head direct effects of CLIP ViTs explained with text (TextSpan, PC
explanations), ablations, segmentation, nearest neighbours and spurious-head removal."""
