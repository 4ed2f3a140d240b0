"""The one place for tower access: for every architecture, the pieces a tower hands out (embedded
tokens, attention blocks as weights, the pooling head, projections) recompute the model's own
image embedding, and hidden states read by hook are the model's own."""

import pytest
import torch

from cliplens.core.models import towers
from cliplens.core.models.blocks import resolve_layer, resolve_layers
from tests import tiny_models as tm



VITS = {
    "open_clip ViT": lambda: tm.open_clip_model(),
    "open_clip ViT, LayerScale + QuickGELU": lambda: tm.open_clip_model(
        dict(tm.TINY_VIT, ls_init_value=0.1), quick_gelu=True),
    "toy clip-vit": tm.toy_vit,
    "transformers CLIP": tm.hf_clip,
    "SigLIP": lambda: tm.siglip(kind="siglip"),
    "SigLIP2 NaFlex": lambda: tm.siglip(kind="siglip2"),
}


@pytest.mark.parametrize("name", list(VITS))
def test_residual_stream_and_pooling_recompute_the_embedding(name):
    """x^0 from embed(), every block through AttentionBlock.run, then pool(): the model's own
    encode_image (float32 rounding only)."""
    model = VITS[name]()
    px = tm.pixels(model, 3)
    tower = model.tower
    with torch.no_grad():
        stream, valid = tower.residual_stream(px)
        z = tower.pool(stream[-1], valid)
        ref = model.encode_image(px)
    assert len(stream) == tower.n_blocks + 1 == len(model.vision_blocks) + 1
    assert tower.pooling in ("cls", "attn_pool")
    assert (valid is not None) == (name == "SigLIP2 NaFlex")
    torch.testing.assert_close(z, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(VITS))
def test_hidden_tokens_are_the_streams_patch_tokens(name):
    """hidden_tokens(layer) (a hook on the library's forward) equals the patch tokens of the
    stream the blocks compute, for the first, a middle and the last hidden state."""
    model = VITS[name]()
    px = tm.pixels(model, 2, seed=1)
    tower = model.tower
    gh, gw = tower.grid()
    with torch.no_grad():
        stream, _ = tower.residual_stream(px)
        for layer in (0, 1, -1):
            tok = tower.hidden_tokens(px, layer)
            assert tok.shape[:2] == (2, gh * gw) and tok.dtype == torch.float32
            want = tower.patch_tokens(stream[resolve_layer(layer, tower.n_blocks)])
            torch.testing.assert_close(tok, want.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["open_clip ViT", "open_clip ViT, LayerScale + QuickGELU",
                                  "toy clip-vit", "transformers CLIP", "SigLIP"])
def test_block_internals_are_consistent(name):
    """One block: the attention output is the sum over heads of z_h @ W_h plus the bias, the
    block output is x + a + m, and the MLP neurons' activations phi and writes W (LayerScale
    folded in) give m = phi @ W^T + ls2 * b_out."""
    model = VITS[name]()
    tower = model.tower
    with torch.no_grad():
        x, valid = tower.embed(tm.pixels(model, 2))
        blk = tower.blocks()[0]
        run = blk.run(x)
        per_head = torch.einsum("bhtk,hkd->btd", run.z, blk.out_per_head(x.dtype))
        torch.testing.assert_close(run.a, per_head + blk.out_bias(x.dtype, x.device),
                                   rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(run.x, x + run.a + run.m)
        phi = blk.neurons(run.x - run.m)
        w = blk.neuron_writes(x.dtype)
        bias = blk.mlp_out.bias if blk.ls2 is None else blk.mlp_out.bias * blk.ls2
        torch.testing.assert_close(phi @ w.T + bias, run.m, rtol=1e-4, atol=1e-6)
    assert phi.shape[-1] == w.shape[1] == blk.mlp_in.out_features
    assert run.q.shape == run.k.shape == run.v.shape == run.z.shape
    assert run.q.shape[1] == blk.heads


def test_resnet_attention_pool_from_its_weights():
    """A CLIP ModifiedResNet: its attention pool recomputed from the weights the tower hands out
    (mean token as query, positional embedding on every token) is the model's embedding."""
    model = tm.open_clip_model(tm.TINY_RESNET, embed_dim=24)
    tower = model.tower
    assert isinstance(tower, towers.OpenClipResNet) and tower.pooling == "attn_pool2d"
    assert len(tower.modules) == 4
    px = tm.pixels(model, 2)
    with torch.no_grad():
        fmap = tower.pooling_input(px)
        assert fmap.ndim == 4 and fmap.shape[1] == 32 * tm.TINY_RESNET["width"]
        torch.testing.assert_close(tower.pool(fmap), model.encode_image(px), rtol=1e-4,
                                   atol=1e-5)
    pool = tower.attention_pool()
    assert pool.query == "mean" and pool.heads == 32 * 8 // 16
    assert pool.positional.shape == (fmap.shape[2] * fmap.shape[3] + 1, fmap.shape[1])
    with pytest.raises(NotImplementedError, match="ModifiedResNet"):
        tower.blocks()
    with pytest.raises(TypeError, match="no patch grid"):
        tower.grid()


@pytest.mark.parametrize("name", ["open_clip ViT", "transformers CLIP", "SigLIP"])
def test_projections_are_the_live_parameters(name):
    """Scaling the text projection the tower module returns scales encode_text (it is the
    parameter the model multiplies by, not a copy); the same for a class-token tower's image
    projection."""
    model = VITS[name]()
    # token ids inside the tiny vocabularies (open_clip pools at the largest id, its end token)
    texts = torch.tensor([[3, 4, 5, 60, 0, 0, 0, 0], [6, 7, 60, 0, 0, 0, 0, 0]])
    if model.library == "open_clip":
        encode = model.model.encode_text
    else:
        def encode(ids):
            return model.model.get_text_features(input_ids=ids)
    with torch.no_grad():
        before = encode(texts)
        before = getattr(before, "pooler_output", before)
        towers.text_projection(model).mul_(2.0)
        after = encode(texts)
        after = getattr(after, "pooler_output", after)
        if name == "SigLIP":  # the head's bias is not scaled: compare without it
            bias = model.model.text_model.head.bias
            torch.testing.assert_close(after - bias, 2 * (before - bias), rtol=1e-4, atol=1e-6)
        else:
            torch.testing.assert_close(after, 2 * before, rtol=1e-4, atol=1e-6)
        if model.tower.pooling == "cls":
            px = tm.pixels(model, 2)
            img = model.encode_image(px)
            w, b = model.tower.image_projection()
            w.mul_(3.0)
            if b is not None:
                b.mul_(3.0)
            torch.testing.assert_close(model.encode_image(px), 3 * img, rtol=1e-4, atol=1e-6)


def test_siglip_has_no_class_token_projection():
    with pytest.raises(NotImplementedError, match="attention_pool"):
        tm.siglip().tower.image_projection()


def test_tower_of_dispatches_on_library_and_class():
    assert isinstance(tm.open_clip_model().tower, towers.OpenClipViT)
    assert isinstance(tm.hf_clip().tower, towers.HFViT)
    assert tm.hf_clip().tower.pooling == "cls" and tm.siglip().tower.pooling == "attn_pool"


def test_layer_indexing():
    assert resolve_layer(-2, 12) == 11 and resolve_layer(0, 12) == 0 and resolve_layer(12, 12) == 12
    with pytest.raises(ValueError, match="outside the 13 hidden states"):
        resolve_layer(13, 12)
    assert resolve_layers(None, 3) == (0, 1, 2) and resolve_layers(2, 3) == (1, 2)
    assert resolve_layers([-1, 0, 0], 3) == (0, 2)
    with pytest.raises(ValueError, match="outside the 3 blocks"):
        resolve_layers([3], 3)
