"""Spatial maps of neuron-head pairs: each pair's map sums over positions to its scalar, so
with every pair the class maps split the class logit (less the pool's bias) exactly; the
matched pairs are those whose component points most along the class text."""

import numpy as np
import pytest
import torch

from cliplens.studies.neurons.pairs import decompose_pairs, pair_scalars
from cliplens.studies.neurons.spatial import class_maps, grid, matched_gains
from tests import tiny_models as tm


def test_class_maps_split_the_logit_over_positions():
    torch.manual_seed(0)
    model = tm.open_clip_model(tm.TINY_RESNET, embed_dim=24)
    px = tm.pixels(model, 3)
    tower = model.tower
    with torch.inference_mode():
        tokens, attention = tower.pool_attention(tower.pooling_input(px))
        dec = decompose_pairs(model, px)
        emb = model.encode_image(px).double()
    rng = np.random.default_rng(0)
    e = rng.standard_normal((5, emb.shape[1]))                          # 5 class directions
    u = dec.directions.double().numpy()
    s_mean = dec.scalars.double().numpy().reshape(3, -1).mean(0)
    every = matched_gains(u, s_mean, e, None)
    maps = class_maps(tokens.double(), attention.double(), torch.as_tensor(every))
    assert maps.shape == (3, 5, tokens.shape[1] - 1)
    want = (emb - dec.bias.double()).numpy() @ e.T       # the model's float32 embedding
    np.testing.assert_allclose(maps.sum(-1).numpy(), want, rtol=0, atol=1e-5 * abs(want).max())
    # any gains: the maps sum to the scalars weighted by the gains
    g = rng.standard_normal(every.shape)
    got = class_maps(tokens.double(), attention.double(), torch.as_tensor(g)).sum(-1)
    s = pair_scalars(tokens.double(), attention.double()).numpy()      # the same float64 inputs
    np.testing.assert_allclose(got.numpy(), np.einsum("bhc,khc->bk", s, g), rtol=1e-10)
    assert grid(maps.numpy()).shape[-2:] == (int(np.sqrt(maps.shape[-1])),) * 2


def test_matched_pairs_point_along_the_class_text():
    rng = np.random.default_rng(1)
    h, c, d = 2, 5, 6
    u = rng.standard_normal((h, c, d))
    e = rng.standard_normal((3, d))
    s_mean = np.ones(h * c)
    s_mean[1] = -1.0                         # pair (0, 1): its scalar is negative on average
    u[1, 3] = 4.0 * e[0]                     # writes along class 0 ...
    u[0, 1] = -2.0 * e[0]                    # ... and so does this one, as its mean is negative
    g = matched_gains(u, s_mean, e, 2)
    assert (np.count_nonzero(g.reshape(3, -1), axis=1) == 2).all()
    assert g[0, 1, 3] == pytest.approx(4.0 * e[0] @ e[0])
    assert g[0, 0, 1] == pytest.approx(-2.0 * e[0] @ e[0])
    with pytest.raises(ValueError, match="pairs per class"):
        matched_gains(u, s_mean, e, 11)
    with pytest.raises(ValueError, match="class directions"):
        matched_gains(u, s_mean, e[:, :4], 2)
