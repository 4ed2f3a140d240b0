"""The toy losses match their formulas (and open_clip's SigLIP loss); SigLIP2's image objective
is the patch MSE and trains the vision tower through its patch tokens."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cliplens.core.toy.models import build_toy_model
from cliplens.core.toy.objectives import (
    PatchPixelObjective,
    caption_match,
    patchify,
    sigmoid_loss,
    softmax_contrastive_loss,
)

from .tiny import TINY



# --- losses ----------------------------------------------------------------------------------


def test_sigmoid_loss_matches_hand_computation_on_2x2():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits z = 2 <x_i, y_j> - 1 = [[1, 0.2], [-1, 0.6]]; labels +1 on the diagonal, -1 off it
    def logsig(x):
        return -math.log1p(math.exp(-x))

    expected = -(logsig(1.0) + logsig(-0.2) + logsig(1.0) + logsig(0.6)) / 2
    got = sigmoid_loss(img, txt, torch.tensor(2.0), torch.tensor(-1.0))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_sigmoid_loss_equals_open_clip_siglip_loss():
    from open_clip.loss import SigLipLoss

    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(7, 5, generator=g), dim=-1)
    txt = F.normalize(torch.randn(7, 5, generator=g), dim=-1)
    ours = sigmoid_loss(img, txt, torch.tensor(10.0), torch.tensor(-10.0))
    ref = SigLipLoss()(img, txt, torch.tensor(10.0), torch.tensor(-10.0))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


def test_softmax_contrastive_loss_is_symmetric_cross_entropy():
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    z = 3.0 * img @ txt.T
    labels = torch.arange(6)
    expected = 0.5 * (F.cross_entropy(z, labels) + F.cross_entropy(z.T, labels))
    assert softmax_contrastive_loss(img, txt, 3.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_multi_positive_loss_is_clips_with_identity_match_and_follows_its_formula():
    g = torch.Generator().manual_seed(2)
    img = F.normalize(torch.randn(3, 4, generator=g), dim=-1)
    txt = F.normalize(torch.randn(3, 4, generator=g), dim=-1)
    eye = torch.eye(3, dtype=torch.bool)
    assert softmax_contrastive_loss(img, txt, 5.0, eye).item() == pytest.approx(
        softmax_contrastive_loss(img, txt, 5.0).item(), rel=1e-6)
    # caption 2 is true of images 1 and 2; caption 0 of images 0 and 2
    m = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 0, 1]], dtype=torch.bool)
    z = (5.0 * img @ txt.T).double().numpy()
    lsm_rows = z - np.log(np.exp(z).sum(1, keepdims=True))  # log softmax over captions
    lsm_cols = z - np.log(np.exp(z).sum(0, keepdims=True))  # over images
    mm = m.numpy().astype(float)
    per_image = -(lsm_rows * mm / mm.sum(1, keepdims=True)).sum(1).mean()
    per_text = -(lsm_cols * mm / mm.sum(0, keepdims=True)).sum(0).mean()
    got = softmax_contrastive_loss(img, txt, 5.0, m).item()
    assert got == pytest.approx(0.5 * (per_image + per_text), rel=1e-5)
    with pytest.raises(ValueError, match="diagonal"):
        softmax_contrastive_loss(img, txt, 5.0, ~eye)


def test_caption_match_is_true_where_every_named_factor_agrees():
    labels = torch.tensor([[0, 1, 2], [0, 3, 2], [1, 1, 2]])  # 3 images x 3 factors
    named = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 0]], dtype=torch.bool)
    m = caption_match(labels, named)
    # caption 0 names everything: image 0 only; caption 1 names factor 0 (= 0): images 0, 1;
    # caption 2 names factor 1 (= 1): images 0, 2
    assert m.tolist() == [[True, True, True], [False, True, False], [False, False, True]]
    assert caption_match(labels, torch.ones(3, 3, dtype=torch.bool)).equal(torch.eye(3, dtype=torch.bool))


def test_patchify_follows_the_vit_token_grid():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    p = patchify(x, 2)
    assert p.shape == (2, 4, 12)
    # token 1 is the top-right 2x2 block; inside it pixel (0, 1), channel 2 is entry (0*2+1)*3+2
    assert p[1, 1, (0 * 2 + 1) * 3 + 2] == x[1, 2, 0, 3]
    # the same order as a stride-p convolution flattened row-major
    conv = torch.nn.Conv2d(3, 12, 2, stride=2, bias=False)
    with torch.no_grad():
        # weight [12, 3, 2, 2] that copies each pixel to its patchify slot
        conv.weight.zero_()
        for i in range(2):
            for j in range(2):
                for c in range(3):
                    conv.weight[(i * 2 + j) * 3 + c, c, i, j] = 1.0
        ref = conv(x).flatten(2).transpose(1, 2)
    assert torch.equal(ref, p)


# --- the image-side objective --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["siglip2", "siglip2-masked"])
def test_image_objective_gradient_reaches_patch_tokens_and_vision_tower_only(kind):
    torch.manual_seed(0)
    toy = build_toy_model(kind, TINY[kind])
    toy.train()
    pixels = torch.randn(4, 3, 16, 16)
    vm = toy.model.vision_model
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["tokens"] = output

    handle = vm.post_layernorm.register_forward_hook(keep)
    vout = vm(pixel_values=pixels)
    tokens = vout.last_hidden_state if kind == "siglip2" else None
    loss = toy.image_objective(vm, pixels, tokens, torch.Generator().manual_seed(0))
    loss.backward()
    handle.remove()
    g = captured["tokens"].grad
    assert g is not None and g.shape == (4, 4, 32)
    per_patch = g.abs().sum(-1)
    if kind == "siglip2":
        assert (per_patch > 0).all(), "every patch token gets gradient"
    else:
        mask_counts = (per_patch > 0).sum(1)
        assert (mask_counts == 2).all(), "only the masked patches get gradient (ratio 0.5 of 4)"
    for name, p in vm.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert vm.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in toy.model.text_model.parameters())
    # the attention-pooling head is not trained by the image objective
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in vm.head.parameters())


def test_pixel_objective_is_the_patch_mse():
    obj = PatchPixelObjective(hidden_size=12, patch_size=2, kind="pixel")
    with torch.no_grad():
        obj.head.weight.copy_(torch.eye(12))
        obj.head.bias.zero_()
    pixels = torch.randn(3, 3, 4, 4)
    target = patchify(pixels, 2)
    tokens = target + 0.5
    assert obj.reconstruction_loss(tokens, pixels).item() == pytest.approx(0.25, rel=1e-6)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[:, 0] = True
    tokens2 = target.clone()
    tokens2[:, 1:] += 1.0  # errors only where unmasked
    assert obj.reconstruction_loss(tokens2, pixels, mask).item() == pytest.approx(0.0, abs=1e-12)
