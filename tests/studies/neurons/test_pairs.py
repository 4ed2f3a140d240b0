"""Neuron-head pairs of CLIP ResNets: the terms sum to the model's own embedding, each is a
scalar per image times a fixed direction, and other towers are refused by name."""

import pytest
import torch

from cliplens.studies.neurons.pairs import decompose_pairs, pair_terms
from tests import tiny_models as tm


def toy_rn():
    """The toy clip-rn architecture of config.yaml with random weights, via the toy path."""
    from cliplens.core.models.open_clip_adapter import OpenClipModel
    from cliplens.core.toy.models import build_toy_model

    torch.manual_seed(0)
    toy = build_toy_model("clip-rn", {"library": "open_clip", "family": "clip", "arch": "resnet",
                                      "vision": {"width": 16, "layers": [1, 1, 1, 1],
                                                 "heads": 4}})
    return OpenClipModel("toy:clip-rn", toy.model.eval(), toy.transform, toy.tokenizer,
                         family="clip", embed_dim=toy.model_cfg["embed_dim"])


def random_open_clip(name):
    from cliplens.core.models.registry import load_model

    torch.manual_seed(0)
    return load_model(f"open_clip:{name}", device="cpu")


MODELS = {"tiny ModifiedResNet": lambda: tm.open_clip_model(tm.TINY_RESNET, embed_dim=24),
          "toy clip-rn": toy_rn,
          "RN50 (random weights)": lambda: random_open_clip("RN50"),
          "RN50x16 (random weights)": lambda: random_open_clip("RN50x16")}


@pytest.mark.parametrize("name", list(MODELS))
def test_pairs_sum_to_the_embedding(name):
    model = MODELS[name]()
    px = tm.pixels(model, 2 if "x16" in name else 3)
    with torch.inference_mode():
        dec = decompose_pairs(model, px)
        ref = model.encode_image(px).float()
    emb = dec.embedding().float()
    cos = torch.nn.functional.cosine_similarity(emb, ref, dim=-1)
    err = (emb - ref).abs().max().item()
    print(f"{name}: cosine {cos.min().item():.7f}, max abs error {err:.3g} "
          f"(embedding scale {ref.abs().max().item():.3g})")
    assert cos.min() >= 0.9999
    assert err <= 1e-4 * ref.abs().max().item() + 1e-5
    pool = model.tower.attention_pool()
    c = model.tower.pooling_input(px[:1]).shape[1]
    assert dec.scalars.shape == (px.shape[0], pool.heads, c)
    assert dec.directions.shape == (pool.heads, c, ref.shape[1])


def test_a_pair_is_a_scalar_times_a_fixed_direction():
    """A pair's vector computed the long way (the pool's value projection on the tokens with
    every channel but c zeroed, head h's attention, head h's slice of the out-projection) is
    rank one over images (second singular value <= 1e-6 of the first) and equals s * u."""
    import torch.nn.functional as F

    model = MODELS["tiny ModifiedResNet"]()
    px = tm.pixels(model, 8, seed=3)
    tower = model.tower
    pool = tower.attention_pool()
    with torch.inference_mode():
        dec = decompose_pairs(model, px)
        tokens, attn = tower.pool_attention(tower.pooling_input(px))
        dh = pool.wv.shape[0] // pool.heads
        for h, c in ((0, 0), (1, 5), (pool.heads - 1, tokens.shape[2] - 1)):
            only_c = torch.zeros_like(tokens)
            only_c[..., c] = tokens[..., c]
            v = F.linear(only_c, pool.wv)[..., h * dh:(h + 1) * dh]          # [N, T, dh]
            z = torch.einsum("nt,ntk->nk", attn[:, h], v)
            r = z @ pool.wo[:, h * dh:(h + 1) * dh].T                        # [N, D]
            sv = torch.linalg.svdvals(r.double())
            assert sv[1] <= 1e-6 * sv[0], (h, c, sv[:2])
            torch.testing.assert_close(r, dec.scalars[:, h, c, None] * dec.directions[h, c],
                                       rtol=1e-4, atol=1e-7)
        # and all pairs' vectors with the bias are the embedding
        r_all = pair_terms(dec.scalars, dec.directions)
        torch.testing.assert_close(r_all.sum((1, 2)) + dec.bias, model.encode_image(px),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["open_clip ViT", "SigLIP"])
def test_towers_without_a_resnet_attention_pool_are_refused(name):
    model = tm.open_clip_model() if name == "open_clip ViT" else tm.siglip(kind="siglip")
    with pytest.raises(NotImplementedError, match="CLIP ResNet with attention pooling"):
        decompose_pairs(model, tm.pixels(model, 1))
