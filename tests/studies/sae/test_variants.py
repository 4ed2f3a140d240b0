"""SAE variants: each one's activation rule and loss as defined, the unit-norm decoder, the
dead-latent loss, the straight-through thresholds, bad sizes named, settings round-trip."""

import pytest
import torch

from cliplens.studies.sae.variants import BatchTopK, JumpReLU, ReluL1, TopK, build_sae


def data(n=64, d=8, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_the_published_model_and_loss():
    torch.manual_seed(0)
    sae = ReluL1(8, 32, l1=1e-3)
    x = data()
    z = torch.relu(x @ sae.encoder.weight.T + sae.encoder.bias)
    x_hat = z @ sae.decoder.weight.T + sae.decoder.bias
    total, parts = sae.loss(x)
    want = ((x_hat - x) ** 2).mean() + 1e-3 * z.abs().mean()
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    assert parts["l0"] == pytest.approx(float((z > 0).sum(1).float().mean()))


def test_topk_keeps_the_k_largest_rectified_values_per_row():
    sae = TopK(8, 32, k=3)
    x = data()
    z = sae.encode(x)
    pre = torch.relu(sae.pre(x))
    assert ((z > 0).sum(1) <= 3).all()
    top = pre.topk(3, dim=1).values
    torch.testing.assert_close(z.topk(3, dim=1).values, top)


def test_batchtopk_shares_the_budget_in_training_and_thresholds_at_inference():
    sae = BatchTopK(8, 32, k=3)
    x = data()
    sae.train()
    z = sae.encode(x)
    r = torch.relu(sae.pre(x))
    assert int((z > 0).sum()) <= 3 * len(x)
    kept, dropped = r[z > 0], r[(z == 0) & (r > 0)]
    assert kept.min() >= dropped.max()
    assert sae.threshold.item() == pytest.approx(kept.min().item())
    sae.eval()
    z2 = sae.encode(x)
    torch.testing.assert_close(z2, torch.where(r > sae.threshold, r, torch.zeros_like(r)))


def test_the_decoder_rows_stay_on_the_unit_sphere():
    sae = TopK(8, 32, k=4)
    sae.init_from(data(200))
    torch.testing.assert_close(sae.b_pre.detach(), data(200).mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        sae.loss(data())[0].backward()
        g = sae.W_dec.grad
        assert (g * sae.W_dec.detach()).sum(1).abs().max() < 1e-6     # no radial component
        opt.step()
        sae.after_step()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32))


def test_dead_latents_reconstruct_the_residual():
    sae = TopK(8, 32, k=1, aux=1.0, dead_after=1)
    x = data(n=4)                        # at most 4 of the 32 latents can fire
    sae.train()
    sae.loss(x)                          # every latent that did not fire is now dead
    total, parts = sae.loss(x)
    assert parts["dead"] > 0 and parts["aux"] > 0
    assert total.item() == pytest.approx(parts["mse"] + parts["aux"], rel=1e-5)


def test_jumprelu_straight_through_gradients():
    """pre 0.4 lies within eps/2 of theta 0.3 (eps 0.5), pre 2.0 and 0.0 do not: H's
    derivative is -(1/eps) there, so d sum(H)/d theta = [-2, 0, 0] and
    d sum(pre H)/d theta = [-theta/eps, 0, 0] = [-0.6, 0, 0], d/d pre = H."""
    from cliplens.studies.sae.variants import _JumpFn, _StepFn

    pre = torch.tensor([[0.4, 2.0, 0.0]], requires_grad=True)
    theta = torch.full((3,), 0.3, requires_grad=True)
    step = _StepFn.apply(pre, theta, 0.5)
    assert step.tolist() == [[1.0, 1.0, 0.0]]
    (g,) = torch.autograd.grad(step.sum(), theta)
    torch.testing.assert_close(g, torch.tensor([-2.0, 0.0, 0.0]))
    jump = _JumpFn.apply(pre, theta, 0.5)
    torch.testing.assert_close(jump.detach(), torch.tensor([[0.4, 2.0, 0.0]]))
    gp, gt = torch.autograd.grad(jump.sum(), (pre, theta))
    torch.testing.assert_close(gt, torch.tensor([-0.6, 0.0, 0.0]))
    torch.testing.assert_close(gp, torch.tensor([[1.0, 1.0, 0.0]]))
    sae = JumpReLU(8, 16, l0=0.1)
    total, parts = sae.loss(data())
    assert total.item() == pytest.approx(parts["mse"] + 0.1 * parts["l0"], rel=1e-5)


def test_bad_sizes_are_named_and_settings_round_trip():
    with pytest.raises(ValueError, match="k = 40 active latents, but the dictionary has 32"):
        TopK(8, 32, k=40)
    with pytest.raises(ValueError, match="dictionary size 4 is below the input width 8"):
        BatchTopK(8, 4, k=2)
    with pytest.raises(ValueError, match="unknown SAE kind"):
        build_sae({"kind": "matryoshka", "d": 8, "m": 32})
    for sae in (ReluL1(8, 32), TopK(8, 32, k=3), BatchTopK(8, 32, k=3), JumpReLU(8, 32)):
        again = build_sae(sae.settings())
        again.load_state_dict(sae.state_dict())
        x = data()
        sae.eval(), again.eval()
        torch.testing.assert_close(again(x)[0], sae(x)[0])
