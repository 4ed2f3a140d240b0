"""Second-order effects of ViT neurons: the exact variant is what zeroing a neuron does to the
frozen model, the published variant is the published formula, and bad input is named."""

import pytest
import torch

from cliplens.core.models.blocks import ln_affine
from cliplens.studies.neurons.second_order import (exact_effects, published_effects,
                                                   record_neurons)
from tests import tiny_models as tm

VITS = {"open_clip ViT (4 blocks)": lambda: tm.open_clip_model(dict(tm.TINY_VIT, layers=4)),
        "open_clip ViT, LayerScale": lambda: tm.open_clip_model(
            dict(tm.TINY_VIT, layers=4, ls_init_value=0.5)),
        "toy clip-vit": tm.toy_vit,
        "transformers CLIP": tm.hf_clip}


def frozen_embedding(model, rec, x_after, layer):
    """The model from the stream after block ``layer`` on, with attention patterns, LayerNorm
    sigmas and later MLP outputs frozen at the recorded image's (a different computation from
    the library's: block by block with the recorded pieces)."""
    tower = model.tower
    blocks = tower.blocks()
    x0, _ = tower.embed(PX[model.spec])
    x = x0
    mlp_out = {}
    for j, blk in enumerate(blocks):  # recorded MLP outputs of the unmodified image
        run = blk.run(x)
        mlp_out[j] = run.m
        x = run.x
    x = x_after
    for i, j in enumerate(rec.later):
        blk = blocks[j]
        gamma, beta, _ = ln_affine(blk.ln1, x.shape[-1], x.dtype, x.device)
        h = gamma * (x - x.mean(-1, keepdim=True)) / rec.sigma1[i][..., None] + beta
        v = torch.nn.functional.linear(h, blk.wv, blk.bv)
        b, t, dv = v.shape
        v = v.view(b, t, blk.heads, -1).transpose(1, 2)
        z = (rec.attn[i] @ v).transpose(1, 2).reshape(b, t, dv)
        a = torch.nn.functional.linear(z, blk.wo, blk.bo)
        if blk.ls1 is not None:
            a = a * blk.ls1
        x = x + a + mlp_out[j]
    gamma, beta, _ = ln_affine(tower.final_norm, x.shape[-1], x.dtype, x.device)
    y = gamma * (x[:, 0] - x[:, 0].mean(-1, keepdim=True)) / rec.sigma_post[:, None] + beta
    proj, pbias = tower.image_projection()
    y = y @ proj
    return y if pbias is None else y + pbias


PX = {}


@pytest.mark.parametrize("name", list(VITS))
@pytest.mark.parametrize("layer", [0, -2])
def test_zeroing_a_neuron_moves_the_frozen_model_by_its_exact_effect(name, layer):
    torch.set_default_dtype(torch.float64)
    try:
        model = VITS[name]()
        model.model.double()
        px = tm.pixels(model, 2).double()
        PX[model.spec] = px
        with torch.no_grad():
            rec = record_neurons(model, px, layer)
            eff = exact_effects(model, rec)                             # [B, N, O]
            blocks = model.tower.blocks()
            x, _ = model.tower.embed(px)
            for blk in blocks[:rec.layer + 1]:
                x = blk.run(x).x
            base = frozen_embedding(model, rec, x, rec.layer)
            # frozen at the recorded values, nothing changed: the model's own embedding
            torch.testing.assert_close(base, model.encode_image(px), rtol=1e-9, atol=1e-10)
            w = blocks[rec.layer].neuron_writes(x.dtype)
            for n in (0, 3, rec.phi.shape[-1] - 1):
                zeroed = x - rec.phi[..., n:n + 1] * w[:, n]
                delta = base - frozen_embedding(model, rec, zeroed, rec.layer)
                torch.testing.assert_close(delta, eff[:, n], rtol=1e-8, atol=1e-11)
            # all neurons zeroed at once: the sum of the effects
            allz = x - rec.phi @ w.T
            torch.testing.assert_close(base - frozen_embedding(model, rec, allz, rec.layer),
                                       eff.sum(1), rtol=1e-8, atol=1e-10)
            # the paths split: direct + single layers + chains; chains vanish for one later layer
            direct = exact_effects(model, rec, "direct")
            single = exact_effects(model, rec, "single")
            if len(rec.later) == 1:
                torch.testing.assert_close(direct + single, eff, rtol=1e-9, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


def published_reference(model, rec, coefficient=100.0):
    """The published second-order lens written out term by term: for each later block j and
    head h, the [B, T, N, D] per-neuron MLP outputs (bias shared), LayerNorm with its mean
    and beta shared, the value map and bias share, the attention, the out-projection and bias
    share, the final LayerNorm at the class token with shares, the projection."""
    tower = model.tower
    blocks = tower.blocks()
    L = len(blocks)
    mlp = blocks[rec.layer]
    n = rec.phi.shape[-1]
    per_neuron = torch.einsum("btn,dn->btnd", rec.phi, mlp.mlp_out.weight) + (
        mlp.mlp_out.bias / n)
    gp, bp, _ = ln_affine(tower.final_norm, per_neuron.shape[-1], torch.float32, "cpu")
    proj, _ = tower.image_projection()
    total = 0
    for i, j in enumerate(rec.later):
        blk = blocks[j]
        H = blk.heads
        g1, b1, _ = ln_affine(blk.ln1, per_neuron.shape[-1], torch.float32, "cpu")
        norm_term = (1 + 2 * j) * n
        normed = (g1 * (per_neuron - rec.mu1[i][:, :, None, None] / norm_term)
                  / rec.sigma1[i][:, :, None, None] + b1 / norm_term)
        dh = blk.wv.shape[0] // H
        for h in range(H):
            v = normed @ blk.wv[h * dh:(h + 1) * dh].T + blk.bv[h * dh:(h + 1) * dh] / norm_term
            x = torch.einsum("bts,bsnk->btnk", rec.attn[i][:, h], v)
            ret = x @ blk.wo[:, h * dh:(h + 1) * dh].T + blk.bo / (norm_term * H)
            post_term = (1 + 2 * j) * (1 + 2 * L) * H * n
            y = ((ret[:, 0] - rec.mu_post[:, None, None] / post_term) * gp
                 / rec.sigma_post[:, None, None] + bp / post_term)
            total = total + y @ proj
    return total * coefficient / rec.embedding.norm(dim=-1)[:, None, None]


@pytest.mark.parametrize("layer", [0, 1])
def test_the_published_variant_is_the_published_formula(layer):
    model = tm.open_clip_model(dict(tm.TINY_VIT, layers=4))
    px = tm.pixels(model, 3)
    with torch.no_grad():
        rec = record_neurons(model, px, layer)
        got = published_effects(model, rec)
        ref = published_reference(model, rec)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert got.shape == (3, rec.phi.shape[-1], model.encode_image(px).shape[-1])


def test_variants_differ_and_chains_are_measured():
    """On a 4-block ViT at block 0 the chains (exact - direct - single) are a non-zero share
    of the second-order part (exact - direct)."""
    model = tm.open_clip_model(dict(tm.TINY_VIT, layers=4))
    with torch.no_grad():
        rec = record_neurons(model, tm.pixels(model, 2), 0)
        exact = exact_effects(model, rec)
        second = exact - exact_effects(model, rec, "direct")
        chains = second - exact_effects(model, rec, "single")
    share = (chains.norm() / second.norm()).item()
    assert 0.001 < share < 1.0, share


def test_bad_input_is_named():
    model = tm.open_clip_model(dict(tm.TINY_VIT, layers=4))
    px = tm.pixels(model, 1)
    with pytest.raises(ValueError, match="MLP layer 4 is outside its 4 blocks"):
        record_neurons(model, px, 4)
    rn = tm.open_clip_model(tm.TINY_RESNET, embed_dim=24)
    with pytest.raises(NotImplementedError, match="class-token ViT"):
        record_neurons(rn, tm.pixels(rn, 1), 0)
    sig = tm.siglip(kind="siglip")
    with pytest.raises(NotImplementedError, match="class-token ViT"):
        record_neurons(sig, tm.pixels(sig, 1), 0)
    with pytest.raises(ValueError, match="paths must be"):
        exact_effects(model, record_neurons(model, px, 0), "chains")
