"""Tiny reconstructors, images and (tokens, image) sources shared by the inversion tests."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cliplens.core.settings import ReconstructorSettings, ReconstructorTrain
from cliplens.studies.inversion.reconstructor import build_reconstructor
from cliplens.studies.inversion.training import PairSource

#: a tiny ``inversion.reconstructor`` (as written in config.yaml)
TINY = {"width": 32, "depth": 1, "heads": 4, "mlp_ratio": 2.0, "channels": [32, 16, 8],
        "res_blocks": 1}
TINY_SETTINGS = ReconstructorSettings.from_dict(TINY)


def train_settings(**kw) -> ReconstructorTrain:
    """``inversion.train`` settings with ``kw``; what ``kw`` leaves out is off (no gradient
    clipping, checkpoints and samples only at the end), as the tests' runs were written."""
    return ReconstructorTrain.from_dict({"grad_clip": 0.0, "checkpoint_every": 0,
                                         "sample_every": 0, "workers": 0, **kw})


class IndexDataset:
    """image(i) -> i, so PairSource's target function can index a tensor."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def image(self, i):
        return i


def smooth_images(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def make_source(n=4, P=16, D=24, seed=0):
    tok = np.random.default_rng(seed).standard_normal((n, P, D)).astype(np.float32)
    imgs = smooth_images(n)
    return PairSource(tok, IndexDataset(n), lambda ims: imgs[list(ims)]), imgs


def make_net(seed=0, D=24):
    return build_reconstructor(D, (4, 4), 32, TINY_SETTINGS, seed=seed)
