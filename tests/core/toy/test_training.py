"""Toy model training: every family learns, saves in its library's format and loads back through
the registry with identical embeddings; training is deterministic; the math attention kernel trains
the same model; partial captions and grouped batches reach the loss as configured."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from cliplens.core.jobs import train_toy_model
from cliplens.core.toy import world
from cliplens.core.toy.batching import partial_caption_set
from cliplens.core.toy.models import (
    IMAGE_OBJECTIVE_FILE,
    build_toy_model,
    toy_model_config,
)
from cliplens.core.toy.training import (
    ATTENTION_BACKENDS,
    attention_backend,
    fit,
    train_toy,
)
from cliplens.core.train import lr_factor

from .tiny import TINY, TINY_TRAIN, toy_splits



@pytest.fixture(scope="module")
def splits(toy_cfg):
    return toy_splits(toy_cfg)


def test_lr_schedule_warms_up_then_decays_to_zero():
    """The schedule fit runs on (TrainLoop's, with min_factor 0)."""
    vals = [lr_factor(s, 100, 10) for s in range(100)]
    assert vals[0] == pytest.approx(0.1) and vals[9] == pytest.approx(1.0)
    assert vals[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(vals[10:], vals[11:]))
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


# --- training, saving, loading -----------------------------------------------------------------


def _overfit(kind: str, steps: int = 25) -> list[float]:
    """Loss per step when training on one fixed batch of 8 pairs."""
    torch.manual_seed(0)
    cfg = copy.deepcopy(TINY[kind])
    toy = build_toy_model(kind, cfg)
    rng = np.random.default_rng(0)
    labels = world.sample_labels(8, rng)
    split = world.draw_split(labels, rng)
    pixels = toy.preprocess(split.images)
    tokens = toy.tokenize(split.captions_rich)
    train = toy.cfg.train.replace(steps=steps, batch_size=8, lr=0.003, warmup=0.0)
    res = fit(toy, pixels, tokens, train, progress=False)
    return [v for _, v in res["loss_history"]]


@pytest.mark.parametrize("kind", ["clip-vit", "siglip"])
def test_math_attention_kernel_trains_the_same_model(kind):
    """fit(attention="math") swaps only the kernel of softmax(QK^T/sqrt d)V: one batch gives
    the same loss and gradients under either kernel, and the same steps from the same start
    give the same losses, up to float rounding."""
    rng = np.random.default_rng(0)
    split = world.draw_split(world.sample_labels(8, rng), rng)
    torch.manual_seed(0)
    toy = build_toy_model(kind, copy.deepcopy(TINY[kind]))
    pixels, tokens = toy.preprocess(split.images), toy.tokenize(split.captions_rich)
    grads, losses = {}, {}
    for backend in ATTENTION_BACKENDS:
        with attention_backend(backend):
            loss, _ = toy.loss(pixels, tokens, torch.Generator().manual_seed(0))
            params = [p for _, p in toy.parameters() if p.requires_grad]
            g = torch.autograd.grad(loss, params, allow_unused=True)
        grads[backend] = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten()
                                    for x, p in zip(g, params)])
        losses[backend] = float(loss.detach())
    assert losses["math"] == pytest.approx(losses["default"], rel=1e-6)
    assert grads["math"].abs().max() > 0
    torch.testing.assert_close(grads["math"], grads["default"], rtol=1e-4, atol=1e-6)

    histories = {}
    for backend in ATTENTION_BACKENDS:
        torch.manual_seed(0)
        toy = build_toy_model(kind, copy.deepcopy(TINY[kind]))
        res = fit(toy, pixels, tokens,
                  toy.cfg.train.replace(steps=4, batch_size=8, lr=0.003, warmup=0.0),
                  progress=False, attention=backend)
        histories[backend] = [v for _, v in res["loss_history"]]
    assert len(histories["math"]) == 4 and histories["math"][-1] < histories["math"][0]
    np.testing.assert_allclose(histories["math"], histories["default"], rtol=1e-4)
    with attention_backend("math"):  # only the math kernel is allowed on a CPU ...
        assert torch.backends.cuda.math_sdp_enabled()
        assert not torch.backends.cuda.flash_sdp_enabled()
    with attention_backend("math", "cuda"):  # ... torch chooses elsewhere
        assert torch.backends.cuda.flash_sdp_enabled()
    with pytest.raises(ValueError, match="attention must be one of"):
        attention_backend("flash")


@pytest.mark.parametrize("kind", list(TINY))
def test_every_family_overfits_a_tiny_batch(kind):
    losses = _overfit(kind)
    first, last = losses[0], losses[-1]
    assert last < 0.6 * first, f"{kind}: loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("kind", list(TINY))
def test_train_save_and_load_back_through_the_registry(kind, splits, tmp_path):
    from PIL import Image

    from cliplens.core.models.registry import load_model

    root = tmp_path / "toy"
    meta = train_toy_model(kind, TINY[kind], splits["train"], splits["val"], root / kind,
                           progress=False)
    out = root / kind
    saved = json.loads((out / "cliplens_model.json").read_text())
    assert saved["name"] == kind and saved["family"] == TINY[kind]["family"]
    assert saved["library"] == TINY[kind]["library"] and saved["steps"] == 5
    assert set(saved["zeroshot"]) >= {"colour", "shape", "position", "size"}
    assert math.isfinite(saved["final_loss"]) and saved["train_seconds"] > 0
    assert saved["config"]["train"]["steps"] == 5 and meta["zeroshot"] == saved["zeroshot"]
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "temporary dir left behind"
    if saved["library"] == "open_clip":
        assert (out / "open_clip_config.json").is_file()
        assert (out / "open_clip_model.safetensors").is_file()
    else:
        assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
        assert (out / "preprocessor_config.json").is_file()
        if saved["family"] == "siglip2":
            assert (out / IMAGE_OBJECTIVE_FILE).is_file()

    # the loader gives the embeddings of the model as it was trained
    torch.manual_seed(TINY[kind]["train"]["seed"])
    ref = build_toy_model(kind, TINY[kind])
    pixels = ref.preprocess(splits["val"]["images"][:6])
    tokens = ref.tokenize(splits["val"]["captions_rich"][:6])
    loaded = load_model(f"toy:{kind}", toy_root=root)

    lp = loaded.preprocess([Image.fromarray(im) for im in splits["val"]["images"][:6]])
    assert torch.allclose(lp, pixels, atol=1e-6), "loader preprocesses differently from training"
    # retrain deterministically in memory and compare with the loaded weights
    toy, _ = train_toy(kind, TINY[kind], splits["train"], progress=False)
    with torch.no_grad():
        a_img = toy.encode_image(pixels)
        a_txt = toy.encode_text(tokens)
        b_img = loaded.encode_image(lp)
        b_txt = loaded.encode_text(splits["val"]["captions_rich"][:6])
    assert torch.allclose(a_img, b_img, atol=1e-5)
    assert torch.allclose(a_txt, b_txt, atol=1e-5)


def test_training_is_deterministic(splits):
    a, _ = train_toy("siglip2", TINY["siglip2-masked"], splits["train"], progress=False)
    b, _ = train_toy("siglip2", TINY["siglip2-masked"], splits["train"], progress=False)
    for (ka, va), (kb, vb) in zip(a.parameters(), b.parameters()):
        assert ka == kb and torch.equal(va, vb), ka


# --- partial captions and grouped batches in training --------------------------------------------


def test_partial_captions_train_deterministically_and_change_the_model(splits):
    part = dict(TINY_TRAIN, partial_captions={"fraction": 0.5})
    a, _ = train_toy("p", dict(TINY["clip-vit"], train=part), splits["train"], progress=False)
    b, _ = train_toy("p", dict(TINY["clip-vit"], train=part), splits["train"], progress=False)
    c, _ = train_toy("p", TINY["clip-vit"], splits["train"], progress=False)
    for (ka, va), (_, vb), (_, vc) in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(va, vb), ka
    assert not all(torch.equal(va, vc) for (_, va), (_, vc) in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize("where", ["all", "random"])
def test_partial_captions_replace_the_chosen_pairs_captions(splits, where, monkeypatch):
    cfg = toy_model_config("p", dict(TINY["clip-vit"], train=dict(
        TINY_TRAIN, steps=3, partial_captions={"fraction": 1.0, "where": where},
        batching={"kind": "grouped", "group_size": 4, "grouped_fraction": 0.5})))
    toy = build_toy_model("p", cfg)
    train = splits["train"]
    rich = toy.tokenize(train["captions_rich"])
    seen = []
    real_loss = toy.loss
    monkeypatch.setattr(toy, "loss", lambda p, t, g=None, match=None: (
        seen.append((t.clone(), match.clone())), real_loss(p, t, g, match))[1])
    fit(toy, toy.preprocess(train["images"]), rich, cfg.train, progress=False,
        labels=train["labels"], partial=partial_caption_set(toy, train["labels"], cfg.train))
    assert len(seen) == 3
    known = {tuple(r.tolist()) for r in rich}
    for tok, match in seen:
        is_rich = [tuple(r.tolist()) in known for r in tok]
        if where == "all":  # every caption partial (they name at most 4 of the 5 factors)
            assert not any(is_rich)
        else:  # the groups (first 16 pairs) keep theirs, the random pairs get partial ones
            assert all(is_rich[:16]) and not any(is_rich[16:])
        assert match.diagonal().all() and match.sum() > len(match)  # partial captions match more


def test_grouped_batching_trains_through_train_toy(splits):
    cfg = dict(TINY["clip-vit"], train=dict(TINY_TRAIN, batching={"kind": "grouped", "group_size": 4}))
    a, _ = train_toy("g", cfg, splits["train"], progress=False)
    b, _ = train_toy("g", cfg, splits["train"], progress=False)
    for (ka, va), (kb, vb) in zip(a.parameters(), b.parameters()):
        assert ka == kb and torch.equal(va, vb), ka
    with pytest.raises(ValueError, match="labels"):
        fit(a, torch.zeros(8, 3, 16, 16), a.tokenize(["a"] * 8), toy_model_config("g", cfg).train,
            progress=False)
