"""Direct-effect decomposition (study 001): the terms sum back to the model's own image embedding
for open_clip ViTs (toy size, LayerScale, ViT-B-16), SigLIP / SigLIP2 (NaFlex) and transformers
CLIP; per-token terms sum to the head terms; a head's term is local to its weights; ``layers=``
folds the rest exactly.  Run ``pytest -s tests/studies/heads/test_decompose.py`` to see the
measured errors."""

import os
import time

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers as T  # noqa: E402

from cliplens.studies.heads.decompose import Decomposition, decompose, resolve_layers  # noqa: E402
from tests import tiny_models as tm  # noqa: E402















def check_exact(model, pixels, atol: float, **kw) -> Decomposition:
    """decompose() sums to encode_image(normalize=False): cosine >= 0.9999, max|error| <= atol."""
    with torch.inference_mode():
        ref = model.encode_image(pixels).float()
        d = decompose(model, pixels, **kw)
    total = d.total()
    err = (total - ref).abs().max().item()
    cos = torch.nn.functional.cosine_similarity(total, ref, dim=-1).min().item()
    print(f"\n[heads] {model.spec} B={len(pixels)} {kw}: max|err|={err:.3g} "
          f"(max|z|={ref.abs().max().item():.3g}) min cos={cos:.8f}")
    assert total.shape == ref.shape
    assert cos >= 0.9999
    assert err <= atol
    stacked, labels = d.terms()
    assert stacked.shape[1] == len(labels)
    assert torch.allclose(stacked.sum(1), total, atol=1e-5)
    return d


# ---------------------------------------------------------------------------------------------
# sums are exact


def test_toy_vit_sums_to_the_embedding():
    m = tm.toy_vit()
    d = check_exact(m, tm.pixels(m, 4), atol=5e-6)
    blocks, heads = len(m.vision_blocks), m.vision_blocks[0].attn.num_heads
    dim = m.embed_dim
    assert d.heads.shape == (4, blocks, heads, dim) and d.mlps.shape == (4, blocks, dim)
    assert d.layers == tuple(range(blocks)) and d.kind == "cls" and d.pool_mlp is None
    assert torch.count_nonzero(d.rest) == 0  # every layer kept
    # the bias term is beta @ proj, the same for every image
    visual = m.model.visual
    assert torch.allclose(d.bias, (visual.ln_post.bias @ visual.proj).expand(4, -1))


def test_layerscale_quickgelu_sincos_vit_sums_to_the_embedding():
    m = tm.open_clip_model(dict(tm.TINY_VIT, ls_init_value=0.3, pos_embed_type="sin_cos_2d"),
                   quick_gelu=True)
    check_exact(m, tm.pixels(m, 3), atol=2e-6)


@pytest.fixture(scope="module")
def vit_b16():
    from cliplens.core.models.registry import load_model

    return load_model("open_clip:ViT-B-16")


def test_vit_b16_sums_to_the_embedding(vit_b16):
    d = check_exact(vit_b16, tm.pixels(vit_b16, 2), atol=2e-5)
    assert d.heads.shape == (2, 12, 12, 512)


@pytest.mark.parametrize("kind", ["siglip", "siglip2"])
def test_tiny_siglip_sums_to_the_embedding(kind):
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  patch_size=8)
    vision.update(image_size=32) if kind == "siglip" else vision.update(num_patches=16)
    m = tm.siglip(vision, kind)
    d = check_exact(m, tm.pixels(m, 3), atol=2e-6)
    assert d.kind == "attn_pool" and d.pool_mlp is not None and d.heads.shape == (3, 3, 4, 32)
    # the constant term is image-independent
    assert torch.allclose(d.bias, d.bias[:1].expand_as(d.bias))
    # everything but pool_mlp is the pooling attention's output o (exactly linear in the tokens)
    head = m.model.vision_model.head
    assert torch.allclose(d.linear_part() + head.mlp(head.layernorm(d.linear_part())), d.total(),
                          atol=1e-5)


def test_siglip_base_size_sums_to_the_embedding():
    """SigLIP base vision tower (SiglipVisionConfig() defaults: 224 px, 16 px patches, 12 layers,
    width 768, 12 heads), random weights, batch 1."""
    m = tm.siglip(T.SiglipVisionConfig().to_dict())
    t = time.perf_counter()
    d = check_exact(m, tm.pixels(m, 1), atol=2e-5)
    print(f"[heads] SigLIP base: encode + decompose {time.perf_counter() - t:.1f} s")
    assert d.heads.shape == (1, 12, 12, 768)


def test_hf_clip_sums_to_the_embedding():
    m = tm.hf_clip()
    d = check_exact(m, tm.pixels(m, 2), atol=2e-6, per_token=True)
    assert d.tokens.shape == (2, 2, 2, 17, 24)


# ---------------------------------------------------------------------------------------------
# per-token terms, locality, kept layers


@pytest.mark.parametrize("which", ["open_clip", "siglip", "siglip2"])
def test_per_token_terms_sum_to_head_terms(which):
    if which == "open_clip":
        m = tm.open_clip_model(tm.TINY_VIT)
    else:
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, patch_size=8)
        vision.update(image_size=32) if which == "siglip" else vision.update(num_patches=16)
        m = tm.siglip(vision, which)
    px = tm.pixels(m, 2)
    d = check_exact(m, px, atol=2e-6, layers=2, per_token=True)
    T_ = d.tokens.shape[3]
    assert d.tokens.shape == (2, 2, 4, T_, d.heads.shape[-1])
    err = (d.tokens.sum(3) - d.heads).abs().max().item()
    print(f"[heads] {which}: max|sum_t tokens - heads| = {err:.3g}")
    assert err <= 1e-6
    if which == "open_clip":
        assert T_ == 17
        assert torch.allclose(d.tokens[:, :, :, 0], d.heads_cls, atol=1e-7)
    if which == "siglip2":  # NaFlex: 16 real patches + 4 padding tokens that contribute nothing
        assert T_ == 20 and torch.count_nonzero(d.tokens[:, :, :, 16:]) == 0
    # per_token=False gives the same head terms
    with torch.inference_mode():
        plain = decompose(m, px, layers=2)
    assert plain.tokens is None
    assert torch.allclose(plain.heads, d.heads, atol=1e-7)


def test_a_head_term_depends_only_on_its_own_value_weights():
    """Changing the value weights of head h of the last layer changes that head's term and, as it
    reads the stream after the attention, the same layer's MLP; no other term changes before the
    final LayerNorm (the post-LN terms change only through the shared sigma)."""
    m = tm.open_clip_model(tm.TINY_VIT)
    px = tm.pixels(m, 3)
    with torch.inference_mode():
        before = decompose(m, px)
    attn = m.model.visual.transformer.resblocks[-1].attn
    D, H = attn.embed_dim, attn.num_heads
    dh, h = D // H, 2
    with torch.no_grad():
        rows = slice(2 * D + h * dh, 2 * D + (h + 1) * dh)
        attn.in_proj_weight[rows] += 0.5 * torch.randn_like(attn.in_proj_weight[rows])
    with torch.inference_mode():
        after = decompose(m, px)
        ref = m.encode_image(px)
    assert torch.allclose(after.total(), ref, atol=2e-6)

    def unnormalised(d):  # every image-dependent term times its image's sigma
        t, labels = d.terms()
        assert labels[-1] == "bias"
        return t[:, :-1] * d.norm_std[:, None, None], labels[:-1]

    tb, labels = unnormalised(before)
    ta, _ = unnormalised(after)
    changed = (ta - tb).abs().amax(dim=(0, 2))
    moved = {labels[i] for i in torch.nonzero(changed > 1e-5).flatten().tolist()}
    print(f"[heads] terms that moved: {sorted(moved)} (max other change "
          f"{changed[[i for i, l in enumerate(labels) if l not in moved]].max().item():.2g})")
    assert moved == {f"L2.H{h}", "L2.mlp"}
    assert not torch.allclose(after.norm_std, before.norm_std)
    assert torch.equal(after.bias, before.bias)


@pytest.mark.parametrize("which", ["open_clip", "siglip"])
def test_kept_layers_fold_the_rest_exactly(which):
    if which == "open_clip":
        m = tm.open_clip_model(dict(tm.TINY_VIT, layers=4))
    else:
        m = tm.siglip(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, patch_size=8, image_size=32))
    px = tm.pixels(m, 2)
    with torch.inference_mode():
        full = decompose(m, px)
    d = check_exact(m, px, atol=2e-6, layers=2)
    assert d.layers == (2, 3)
    assert torch.allclose(d.heads, full.heads[:, 2:], atol=1e-7)
    assert torch.allclose(d.mlps, full.mlps[:, 2:], atol=1e-7)
    assert torch.allclose(d.attn_bias, full.attn_bias[:, 2:], atol=1e-7)
    assert torch.allclose(d.embed, full.embed, atol=1e-7)
    folded = (full.heads[:, :2].sum(dim=(1, 2)) + full.mlps[:, :2].sum(1)
              + full.attn_bias[:, :2].sum(1))
    assert torch.allclose(d.rest, folded, atol=1e-6)
    # an explicit list of layers (negative from the end) and no layer at all
    d2 = check_exact(m, px, atol=2e-6, layers=[0, -1])
    assert d2.layers == (0, 3) and torch.allclose(d2.heads, full.heads[:, [0, 3]], atol=1e-7)
    d0 = check_exact(m, px, atol=2e-6, layers=0)
    assert d0.heads.shape[1] == 0 and d0.terms()[1] == (["embed", "rest", "bias"] +
                                                        (["pool_mlp"] if which == "siglip" else []))


def test_resolve_layers():
    assert resolve_layers(None, 4) == (0, 1, 2, 3)
    assert resolve_layers(1, 4) == (3,)
    assert resolve_layers([-1, 0, 0], 4) == (0, 3)
    with pytest.raises(ValueError):
        resolve_layers(5, 4)
    with pytest.raises(ValueError):
        resolve_layers([4], 4)


def test_labels_name_layers_and_heads():
    m = tm.open_clip_model(tm.TINY_VIT)
    with torch.inference_mode():
        d = decompose(m, tm.pixels(m, 1), layers=1)
    _, labels = d.terms()
    assert labels == ["embed", "L2.H0", "L2.H1", "L2.H2", "L2.H3", "L2.attn_bias", "L2.mlp",
                      "rest", "bias"]


# ---------------------------------------------------------------------------------------------
# unsupported towers say so


@pytest.mark.parametrize("vision_cfg, match", [
    (dict(image_size=32, layers=[1, 1, 1, 1], width=16, head_width=32), "ModifiedResNet"),
    (dict(tm.TINY_VIT, pool_type="avg"), "pool_type"),
    (dict(tm.TINY_VIT, attentional_pool=True, attn_pooler_heads=2, attn_pooler_queries=4),
     "attentional_pool"),
    (dict(tm.TINY_VIT, qk_norm=True), "CustomResidualAttentionBlock"),
])
def test_unsupported_open_clip_towers_raise(vision_cfg, match):
    m = tm.open_clip_model(vision_cfg)
    with pytest.raises(NotImplementedError, match=match):
        decompose(m, tm.pixels(m, 1))
