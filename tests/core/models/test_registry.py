"""The model registry: spec parsing, open_clip / transformers / toy loading, offline errors.

Every model here has random weights and is built on this machine; nothing touches the network
(the registry switches Hugging Face offline mode on itself, and the tests set it too).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import open_clip
import pytest
import torch
import transformers as T
from PIL import Image

from cliplens.core.models import registry
from cliplens.core.models.base import ClipModel, ModelUnavailableError
from cliplens.core.models.registry import load_model
from cliplens.core.models.storage import (
    read_model_meta,
    save_open_clip_dir,
    save_transformers_dir,
    write_model_meta,
)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

TEXTS = ["a red circle on the left", "a large blue square", "a small green star at the top"]
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _images(n: int = 2, size: tuple[int, int] = (40, 40), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
            for _ in range(n)]


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-6) -> None:
    assert a.shape == b.shape
    assert float((a - b).abs().max()) < tol


# ---------------------------------------------------------------------------------------------
# spec errors


@pytest.mark.parametrize(
    "spec, words",
    [
        ("ViT-B-16", ["bad model spec", "open_clip:NAME@PRETRAINED"]),
        ("foo:bar", ["unknown scheme", "'foo'"]),
        ("toy:", ["empty name"]),
        ("open_clip:NoSuchNet-B-99", ["unknown open_clip model", "NoSuchNet-B-99"]),
        ("open_clip:ViT-B-16@no_such_tag", ["unknown pretrained tag", "no_such_tag", "laion2b_s34b_b88k"]),
    ],
)
def test_bad_specs_are_named(spec, words):
    with pytest.raises(ValueError) as err:
        load_model(spec)
    for w in words:
        assert w in str(err.value)


def test_hub_cache_dir_reads_hf_home(tmp_path):
    assert registry.hub_cache_dir(tmp_path) == tmp_path / "hub"  # HF_HOME layout
    (tmp_path / "cache" / "models--org--x").mkdir(parents=True)
    assert registry.hub_cache_dir(tmp_path / "cache") == tmp_path / "cache"  # a hub cache itself


def test_registry_is_one_dict_of_loaders():
    assert set(registry.LOADERS) == {"open_clip", "hf", "toy", "laclip"}
    assert registry.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------------------------------
# real open_clip architectures, random weights


@pytest.fixture(scope="module")
def vit_b16():
    return load_model("open_clip:ViT-B-16")


@pytest.fixture(scope="module")
def rn50():
    return load_model("open_clip:RN50")


@pytest.mark.parametrize("name, dim, blocks", [("vit_b16", 512, 12), ("rn50", 1024, 4)])
def test_open_clip_real_architectures(request, name, dim, blocks):
    m: ClipModel = request.getfixturevalue(name)
    assert (m.library, m.family, m.image_size, m.embed_dim) == ("open_clip", "clip", 224, dim)
    x = m.preprocess(_images(1, size=(300, 200)))
    assert x.shape == (1, 3, 224, 224)
    pixels = torch.cat([x, x.flip(-1)])
    calls = []
    hooks = [b.register_forward_hook(lambda mod, i, o, k=k: calls.append(k))
             for k, b in enumerate(m.vision_blocks)]
    try:
        with torch.inference_mode():
            emb = m.encode_image(pixels)
    finally:
        for h in hooks:
            h.remove()
    # the listed blocks are the tower's blocks, each run once per forward, in order
    assert len(m.vision_blocks) == blocks
    assert calls == list(range(blocks))
    with torch.inference_mode():
        ref = m.model.encode_image(pixels)
        unit = m.encode_image(pixels, normalize=True)
        txt = m.encode_text(TEXTS[:2])
    assert emb.shape == (2, dim) and txt.shape == (2, dim)
    _close(emb, ref)
    _close(unit, ref / ref.norm(dim=-1, keepdim=True), 1e-5)
    prov = m.provenance()
    assert prov["model"] == f"open_clip:{'ViT-B-16' if dim == 512 else 'RN50'}"
    assert prov["preprocess"]["mean"] == pytest.approx(list(open_clip.OPENAI_DATASET_MEAN))
    assert prov["preprocess"]["resize_mode"] == "shortest"


def test_open_clip_text_batches_match_one_batch(rn50):
    rn50.text_batch_size = 2
    try:
        with torch.inference_mode():
            batched = rn50.encode_text(TEXTS)
            ref = rn50.model.encode_text(open_clip.get_tokenizer("RN50")(TEXTS))
    finally:
        rn50.text_batch_size = 256
    _close(batched, ref, 1e-5)


def test_openai_weights_get_quick_gelu():
    assert registry.open_clip_create_kwargs("ViT-B-16", "openai")["force_quick_gelu"] is True
    assert "force_quick_gelu" not in registry.open_clip_create_kwargs("ViT-B-16", "laion2b_s34b_b88k")
    assert "force_quick_gelu" not in registry.open_clip_create_kwargs("ViT-B-16", None)


def test_openai_tag_builds_quick_gelu_in_both_towers(monkeypatch):
    """The whole load path for ViT-B-32@openai, with the download replaced by 'no checkpoint'."""
    monkeypatch.setattr(registry, "_open_clip_weights_cached", lambda *a, **k: None)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda *a, **k: "")
    m = load_model("open_clip:ViT-B-32@openai")
    acts = lambda mod: {type(b.mlp.gelu).__name__ for b in mod.transformer.resblocks}  # noqa: E731
    assert acts(m.model.visual) == {"QuickGELU"}
    assert acts(m.model) == {"QuickGELU"}
    assert m.provenance()["quick_gelu"] is True and m.provenance()["pretrained"] == "openai"


# ---------------------------------------------------------------------------------------------
# transformers: tiny models in a fake Hugging Face cache


def _tokenizer(eos_last: bool = True) -> T.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = sorted({w for t in TEXTS for w in t.split()} | {"photo", "of"})
    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, **{w: i + 3 for i, w in enumerate(words)}}
    vocab["[EOS]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", vocab["[EOS]"])]
    )
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                     bos_token="[BOS]", eos_token="[EOS]")


def _tiny(kind: str):
    """(model, image processor, tokenizer) of a tiny random-weight transformers model."""
    torch.manual_seed(0)
    tok = _tokenizer()
    v = len(tok)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    if kind == "siglip":
        cfg = T.SiglipConfig(
            text_config=dict(common, vocab_size=v, max_position_embeddings=16, pad_token_id=0,
                             eos_token_id=v - 1, bos_token_id=2),
            vision_config=dict(common, image_size=32, patch_size=8),
        )
        model = T.SiglipModel(cfg)
        proc = T.SiglipImageProcessor(size={"height": 32, "width": 32})
    elif kind == "siglip2":
        cfg = T.Siglip2Config(
            text_config=dict(common, vocab_size=v, max_position_embeddings=16, pad_token_id=0,
                             eos_token_id=v - 1, bos_token_id=2),
            vision_config=dict(common, patch_size=8, num_patches=16),
        )
        model = T.Siglip2Model(cfg)
        proc = T.Siglip2ImageProcessor(patch_size=8, max_num_patches=20)  # 4x4 grid + 4 padding
    elif kind == "clip":
        cfg = T.CLIPConfig(
            text_config=dict(common, vocab_size=v, max_position_embeddings=16, pad_token_id=0,
                             eos_token_id=v - 1, bos_token_id=2),
            vision_config=dict(common, image_size=32, patch_size=8),
            projection_dim=24,
        )
        model = T.CLIPModel(cfg)
        proc = T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        raise ValueError(kind)
    return model.eval(), proc, tok


def _into_fake_cache(src, hf_home, repo: str):
    """Lay ``src`` out as the hub cache does: models--org--name/snapshots/<commit>/ + refs/main."""
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(src, root / "snapshots" / FAKE_COMMIT)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(FAKE_COMMIT)


def _reference(kind: str, model, proc, tok, images, texts):
    """Embeddings and logits computed straight from the library objects."""
    with torch.inference_mode():
        if kind == "clip":
            t = tok(texts, padding=True, return_tensors="pt")
            t = {"input_ids": t["input_ids"], "attention_mask": t["attention_mask"]}
        else:
            length = model.config.text_config.max_position_embeddings
            t = {"input_ids": tok(texts, padding="max_length", max_length=length,
                                  return_tensors="pt")["input_ids"]}
        p = dict(proc(images=images, return_tensors="pt"))
        img = model.get_image_features(**p).pooler_output
        txt = model.get_text_features(**t).pooler_output
        logits = model(**p, **t).logits_per_image
    return img, txt, logits


@pytest.mark.parametrize("kind, family, arch", [
    ("siglip", "siglip", "SiglipModel"),
    ("siglip2", "siglip2", "Siglip2Model"),
    ("clip", "clip", "CLIPModel"),
])
def test_hf_models_load_from_the_cache(tmp_path, monkeypatch, kind, family, arch):
    model, proc, tok = _tiny(kind)
    save_transformers_dir(model, proc, tok, tmp_path / "saved")
    _into_fake_cache(tmp_path / "saved", tmp_path, f"org/tiny-{kind}")
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    const_before = constants.HF_HUB_OFFLINE

    m = load_model(f"hf:org/tiny-{kind}", hf_home=str(tmp_path))

    # offline mode was on for the call only
    assert "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE == const_before
    assert (m.library, m.family, m.image_size) == ("transformers", family, 32)
    assert m.embed_dim == (24 if kind == "clip" else 32)
    assert len(m.vision_blocks) == 2
    images = _images(2, size=(40, 40))
    img_ref, txt_ref, logits_ref = _reference(kind, model, proc, tok, images, TEXTS[:2])
    pixels = m.preprocess(images)
    assert pixels.shape == (2, 3, 32, 32)
    with torch.inference_mode():
        img = m.encode_image(pixels)
        txt = m.encode_text(TEXTS[:2])
        img_n, txt_n = m.encode_image(pixels, normalize=True), m.encode_text(TEXTS[:2], normalize=True)
    _close(img, img_ref, 1e-5)
    _close(txt, txt_ref, 1e-5)
    # the embeddings are the ones the model's own contrastive head scores
    logits = m.logit_scale() * img_n @ txt_n.T + (m.logit_bias() or 0.0)
    _close(logits, logits_ref, 1e-4)
    prov = m.provenance()
    assert prov["architecture"] == arch and prov["revision"] == FAKE_COMMIT
    assert prov["preprocess"]["mean"] == pytest.approx(list(proc.image_mean))
    assert prov["preprocess"]["size"] == 32


def test_siglip_base_architecture_from_the_cache(tmp_path):
    """SigLIP base sizes (ViT-B/16 at 224, 12 blocks, width 768; text length 64), random weights,
    with a small vocabulary to keep the file small."""
    torch.manual_seed(0)
    tok = _tokenizer()
    v = len(tok)
    cfg = T.SiglipConfig(text_config=dict(vocab_size=v, pad_token_id=0, eos_token_id=v - 1,
                                          bos_token_id=2))
    model = T.SiglipModel(cfg).eval()
    proc = T.SiglipImageProcessor(size={"height": 224, "width": 224})
    save_transformers_dir(model, proc, tok, tmp_path / "saved")
    _into_fake_cache(tmp_path / "saved", tmp_path, "org/siglip-base")
    m = load_model("hf:org/siglip-base", hf_home=str(tmp_path))
    assert (m.family, m.image_size, m.embed_dim, len(m.vision_blocks)) == ("siglip", 224, 768, 12)
    images = _images(1, size=(256, 192))
    img_ref, txt_ref, _ = _reference("siglip", model, proc, tok, images, TEXTS[:2])
    with torch.inference_mode():
        pixels = m.preprocess(images)
        assert pixels.shape == (1, 3, 224, 224)
        _close(m.encode_image(torch.cat([pixels, pixels]))[:1], img_ref, 1e-4)
        _close(m.encode_text(TEXTS[:2]), txt_ref, 1e-4)


def test_siglip2_naflex_patches_roundtrip(tmp_path):
    """preprocess folds the processor's patches into images; encode_image cuts them back the same
    way, padded to max_num_patches with a zero mask, exactly as the processor does."""
    model, proc, tok = _tiny("siglip2")
    save_transformers_dir(model, proc, tok, tmp_path / "m")
    m = load_model(f"hf:{tmp_path / 'm'}")  # a local directory
    images = _images(2, size=(48, 48), seed=3)
    out = proc(images=images, return_tensors="pt")
    ours = m.naflex_inputs(m.preprocess(images))
    for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes"):
        assert torch.equal(ours[key].to(out[key].dtype), out[key]), key
    assert int(ours["pixel_attention_mask"].sum()) == 2 * 16
    # non-square images are squashed to the model's square input
    assert m.preprocess(_images(1, size=(60, 30))).shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------------------------
# toy models: saved in the library's own format, loaded through the same code


def _tiny_open_clip(resnet: bool = False):
    vision = ({"image_size": 32, "layers": [1, 1, 1, 1], "width": 16} if resnet
              else {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32})
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": vision,
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    preprocess_cfg = {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                      "interpolation": "bilinear", "resize_mode": "squash"}
    torch.manual_seed(1)
    model = open_clip.CLIP(**model_cfg).eval()
    return model, model_cfg, preprocess_cfg


@pytest.mark.parametrize("resnet", [False, True])
def test_toy_open_clip_roundtrip(tmp_path, resnet):
    model, model_cfg, preprocess_cfg = _tiny_open_clip(resnet)
    path = tmp_path / "toy" / "clip-x"
    save_open_clip_dir(model, model_cfg, preprocess_cfg, path)
    write_model_meta(path, {"library": "open_clip", "family": "clip", "name": "clip-x", "steps": 3})
    assert read_model_meta(path)["steps"] == 3

    m = load_model("toy:clip-x", toy_root=tmp_path / "toy")

    assert (m.library, m.family, m.image_size, m.embed_dim) == ("open_clip", "clip", 32, 32)
    assert len(m.vision_blocks) == (4 if resnet else 2)
    pixels = m.preprocess(_images(2, size=(50, 40)))
    assert pixels.shape == (2, 3, 32, 32)
    # the saved preprocessing is used: squash-resize, then (x - 0.5) / 0.25
    raw = torch.from_numpy(np.array(_images(1, size=(32, 32))[0])).permute(2, 0, 1) / 255.0
    _close(m.preprocess(_images(1, size=(32, 32)))[0], (raw - 0.5) / 0.25, 1e-5)
    tokens = open_clip.get_tokenizer("ViT-B-16", context_length=16)(TEXTS)
    with torch.inference_mode():
        _close(m.encode_image(pixels), model.encode_image(pixels))
        _close(m.encode_text(TEXTS), model.encode_text(tokens))
    prov = m.provenance()
    assert prov["model"] == "toy:clip-x" and prov["toy"] == "clip-x"
    assert prov["preprocess"]["std"] == [0.25, 0.25, 0.25]
    assert prov["preprocess"]["resize_mode"] == "squash"
    assert len(prov["weights_sha256"]) == 64


def test_toy_transformers_uses_the_family_in_its_metadata(tmp_path):
    model, proc, tok = _tiny("siglip")
    path = tmp_path / "toy" / "siglip-32"
    save_transformers_dir(model, proc, tok, path)
    write_model_meta(path, {"library": "transformers", "family": "siglip2", "name": "siglip-32"})
    m = load_model("toy:siglip-32", toy_root=tmp_path / "toy")
    assert (m.library, m.family) == ("transformers", "siglip2")
    img_ref, txt_ref, _ = _reference("siglip", model, proc, tok, _images(1), TEXTS[:1])
    with torch.inference_mode():
        _close(m.encode_image(m.preprocess(_images(1))), img_ref, 1e-5)
        _close(m.encode_text(TEXTS[:1]), txt_ref, 1e-5)


def test_missing_toy_model_names_the_rule(tmp_path):
    with pytest.raises(ModelUnavailableError, match=r"snakemake .*toy/clip-vit"):
        load_model("toy:clip-vit", toy_root=tmp_path / "toy")
    (tmp_path / "toy" / "clip-vit").mkdir(parents=True)
    with pytest.raises(ModelUnavailableError, match="cliplens_model.json"):
        load_model("toy:clip-vit", toy_root=tmp_path / "toy")


def test_model_meta_is_validated(tmp_path):
    with pytest.raises(ValueError, match="family"):
        write_model_meta(tmp_path, {"library": "open_clip", "family": "vit", "name": "x"})
    with pytest.raises(ValueError, match="library"):
        write_model_meta(tmp_path, {"family": "clip", "name": "x"})


# ---------------------------------------------------------------------------------------------
# offline without cached weights


@pytest.mark.parametrize("spec, fetch", [
    ("open_clip:ViT-B-16@laion2b_s34b_b88k", "hf download laion/CLIP-ViT-B-16-laion2B-s34B-b88K"),
    ("hf:google/siglip2-base-patch16-512", "hf download google/siglip2-base-patch16-512"),
])
def test_uncached_weights_give_one_clear_error(tmp_path, spec, fetch):
    with pytest.raises(ModelUnavailableError) as err:
        load_model(spec, hf_home=str(tmp_path))
    msg = str(err.value)
    assert spec in msg
    assert fetch in msg
    assert str(tmp_path / "hub") in msg  # the cache searched
    assert f"HF_HOME={tmp_path}" in msg


@pytest.mark.parametrize("name,damage", [("clip-vit", "flip"), ("siglip2-32", "flip"),
                                         ("siglip2-32", "truncate"), ("clip-vit", "config")])
def test_a_toy_model_changed_after_saving_is_refused(tiny_world, tmp_path, name, damage):
    import shutil

    from tests.corrupt import flip_byte, truncate

    from cliplens.core.io import CorruptFileError

    root = tmp_path / "toy"
    shutil.copytree(tiny_world.results / "models" / "toy" / name, root / name)
    load_model(f"toy:{name}", toy_root=root)  # the copy loads: every digest holds
    weights = next((root / name).glob("*model.safetensors"))
    if damage == "flip":
        flip_byte(weights)
        bad = weights
    elif damage == "truncate":
        truncate(weights)
        bad = weights
    else:  # an edited config: the architecture would change under the same weights
        bad = root / name / "open_clip_config.json"
        bad.write_text(bad.read_text().replace('"layers": 1', '"layers": 2'))
    with pytest.raises(CorruptFileError) as err:
        load_model(f"toy:{name}", toy_root=root)
    msg = str(err.value)
    assert f"{bad} is damaged: its SHA-256 is" in msg and f"rm -r {root / name}" in msg
