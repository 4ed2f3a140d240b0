"""SAE metrics follow their definitions, whatever the blocks; CLIP+SAE rows are unit norm."""

import numpy as np
import pytest
import torch

from cliplens.studies.sae.metrics import reconstructed, sae_metrics
from cliplens.studies.sae.variants import ReluL1, TopK


def test_metrics_match_their_definitions_in_any_blocks():
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    sae = ReluL1(8, 24)
    sae.eval()
    with torch.no_grad():
        xh, z = (t.double().numpy() for t in sae(torch.as_tensor(x)))
    got = sae_metrics(sae, [x[:7], x[7:30], x[30:]], dense_above=0.5)
    x64 = x.astype(np.float64)
    assert got["n"] == 50
    assert got["mse"] == pytest.approx(((xh - x64) ** 2).mean())
    assert got["l1"] == pytest.approx(np.abs(z).mean())
    assert got["l0"] == pytest.approx((z > 0).sum(1).mean())
    assert got["r2"] == pytest.approx(1 - ((xh - x64) ** 2).sum() / ((x64 - x64.mean(0)) ** 2).sum())
    rate = (z > 0).mean(0)
    np.testing.assert_allclose(got["firing"], rate)
    assert got["dead"] == pytest.approx((rate == 0).mean())
    assert got["dense"] == pytest.approx((rate > 0.5).mean())
    with pytest.raises(ValueError, match="no rows"):
        sae_metrics(sae, [])


def test_topk_l0_is_k_and_reconstructions_are_unit_norm():
    x = np.random.default_rng(1).standard_normal((40, 8)).astype(np.float32) + 3
    sae = TopK(8, 32, k=3)
    sae.init_from(torch.as_tensor(x))
    assert sae_metrics(sae, [x])["l0"] <= 3
    r = reconstructed(sae, x)
    np.testing.assert_allclose(np.linalg.norm(r, axis=1), 1.0, rtol=1e-12)
