"""LaCLIP checkpoints (``laclip:NAME``): a tiny LaCLIP-like model with random weights, built
independently of open_clip (timm's ViT for the image tower, OpenAI's text transformer written out
with ``nn.MultiheadAttention``), saved in LaCLIP's key layout, must give the same embeddings once
read into open_clip's ``CLIP``.  Nothing touches the network."""

from __future__ import annotations

import argparse
from collections import OrderedDict
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from timm.models.vision_transformer import VisionTransformer
from torchvision import transforms as TV

from cliplens.core.jobs import model_load
from cliplens.core.models.base import ModelUnavailableError
from cliplens.core.models.laclip import laclip_config, laclip_to_open_clip
from cliplens.core.models.projections import projections_removed
from cliplens.core.models.registry import LACLIP_URL, load_model
from cliplens.core.models.storage import sha256_file
from cliplens.core.models.towers import OpenClipViT, text_projection, tower_of
from cliplens.core.specs import ModelSpec, parse_model_spec, slugify, unslugify
from cliplens.studies.purity.jobs import projection_rows

torch.set_num_threads(1)

TEXTS = ["a photo of a dog.", "a red circle on the left of a large blue square",
         "itap of a origami crane.", ""]
ATOL = 1e-5


class _QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class _TextBlock(nn.Module):
    """OpenAI CLIP's text block (sequence-first nn.MultiheadAttention, QuickGELU)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)),
                                              ("gelu", _QuickGELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x, mask):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.ModuleList([_TextBlock(width, heads) for _ in range(layers)])


class _RefLaCLIP(nn.Module):
    """LaCLIP's ``CLIP`` in miniature: its parameter names, its forward."""

    def __init__(self, *, qk_norm: bool, width: int = 64, heads: int = 4, text_width: int = 64,
                 embed: int = 32, context: int = 77, vocab: int = 49408):
        super().__init__()
        self.visual = VisionTransformer(
            img_size=32, patch_size=8, embed_dim=width, depth=2, num_heads=heads, qkv_bias=True,
            qk_norm=qk_norm, num_classes=0, norm_layer=partial(nn.LayerNorm, eps=1e-6))
        self.transformer = _Transformer(text_width, 2, text_width // 64)
        self.token_embedding = nn.Embedding(vocab, text_width)
        self.positional_embedding = nn.Parameter(torch.empty(context, text_width))
        self.ln_final = nn.LayerNorm(text_width)
        self.image_projection = nn.Parameter(torch.empty(width, embed))
        self.text_projection = nn.Parameter(torch.empty(text_width, embed))
        self.logit_scale = nn.Parameter(torch.tensor(2.3))
        self.register_buffer("mask", torch.full((context, context), float("-inf")).triu(1),
                             persistent=False)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # every weight random (biases, norms, patch bias included)
            for name, p in self.named_parameters():
                if name != "logit_scale":
                    p.copy_(0.15 * torch.randn(p.shape, generator=g))
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):  # around 1 / 0
                    m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
        for m in self.visual.modules():  # LaCLIP: eps 1e-6 everywhere in the image tower
            if isinstance(m, nn.LayerNorm):
                assert m.eps == 1e-6

    def image_features(self, pixels):
        return self.visual(pixels)  # normed class token (num_classes=0)

    def encode_image(self, pixels):
        return self.image_features(pixels) @ self.image_projection

    def text_features(self, tokens):
        x = (self.token_embedding(tokens) + self.positional_embedding).permute(1, 0, 2)
        for blk in self.transformer.resblocks:
            x = blk(x, self.mask)
        x = self.ln_final(x.permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]

    def encode_text(self, tokens):
        return self.text_features(tokens) @ self.text_projection


def _save(ref: nn.Module, root, name: str = "tiny_laclip", edit=None):
    """``ref``'s weights in LaCLIP's checkpoint layout (``module.`` prefix, training args)."""
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    if edit is not None:
        edit(state)
    path = root / "models" / "laclip" / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 25, "best_acc1": 21.5,
                "args": argparse.Namespace(model="CLIP_VITB16", betas=[0.9, 0.98], resume=""),
                "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return path


def _pixels(n: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _maxdiff(a, b) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("res")
    ref = _RefLaCLIP(qk_norm=True).eval()
    path = _save(ref, root)
    return ref, root, path, load_model("laclip:tiny_laclip", resources=root)


# ---------------------------------------------------------------------------------------------
# outputs


def test_laclip_matches_reference(tiny):
    ref, _, path, model = tiny
    px = _pixels()
    with torch.no_grad():
        d_img = _maxdiff(model.encode_image(px), ref.encode_image(px))
        d_txt = _maxdiff(model.encode_text(TEXTS), ref.encode_text(model.tokenize(TEXTS)))
    print(f"qk_norm: max |diff| image {d_img:.2e}, text {d_txt:.2e}")
    assert d_img < ATOL and d_txt < ATOL
    assert model.logit_scale() == pytest.approx(float(ref.logit_scale.detach().exp()), rel=1e-6)
    m = model.model
    assert type(m).__name__ == "CLIP" and model.family == "clip" and model.image_size == 32
    assert isinstance(tower_of(model), OpenClipViT)
    assert all(b.attn.ln_q.eps == 1e-6 and b.attn.ln_k.eps == 1e-6
               for b in m.visual.transformer.resblocks)
    prov = model.provenance()
    assert prov["weights_sha256"] == sha256_file(path) and prov["laclip_file"] == "tiny_laclip.pt"


def test_laclip_without_qk_norm(tmp_path):
    # LaCLIP's ViT without q/k norms: heads = D / 64, so D = 128 gives two heads
    ref = _RefLaCLIP(qk_norm=False, width=128, heads=2).eval()
    _save(ref, tmp_path, "plain")
    model = load_model("laclip:plain", resources=tmp_path)
    cfg = model.model.visual.transformer.resblocks[0]
    assert type(cfg).__name__ == "ResidualAttentionBlock" and cfg.attn.num_heads == 2
    px = _pixels(seed=2)
    with torch.no_grad():
        d_img = _maxdiff(model.encode_image(px), ref.encode_image(px))
        d_txt = _maxdiff(model.encode_text(TEXTS), ref.encode_text(model.tokenize(TEXTS)))
    print(f"no qk_norm: max |diff| image {d_img:.2e}, text {d_txt:.2e}")
    assert d_img < ATOL and d_txt < ATOL


def test_preprocess_is_laclips_eval_transform(tiny):
    """Resize (bilinear) + CenterCrop + ImageNet mean/std, as LaCLIP's train.py / eval."""
    *_, model = tiny
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
           for h, w in ((40, 56), (70, 33))]
    published = TV.Compose([TV.Resize(32), TV.CenterCrop(32), TV.ToTensor(),
                            TV.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    assert _maxdiff(model.preprocess(ims), torch.stack([published(im) for im in ims])) < 1e-6
    assert model.provenance()["preprocess"]["interpolation"] == "bilinear"


def test_projections_removed_gives_pre_projection_features(tiny):
    ref, _, _, model = tiny
    px = _pixels(seed=3)
    w_img, bias = tower_of(model).image_projection()
    assert bias is None
    with torch.no_grad():
        with projections_removed(model):
            pre_img, pre_txt = model.encode_image(px), model.encode_text(TEXTS)
        assert _maxdiff(pre_img, ref.image_features(px)) < ATOL
        assert _maxdiff(pre_txt, ref.text_features(model.tokenize(TEXTS))) < ATOL
        assert _maxdiff(pre_img @ w_img, model.encode_image(px)) < ATOL
        assert _maxdiff(pre_txt @ text_projection(model), model.encode_text(TEXTS)) < ATOL
    assert torch.equal(w_img, ref.image_projection) and torch.equal(text_projection(model),
                                                                      ref.text_projection)
    rows = projection_rows(model)
    assert rows["image"].shape == (32, 64) and rows["text"].shape == (32, 64)


# ---------------------------------------------------------------------------------------------
# the pure functions


def test_laclip_config_reads_sizes(tiny):
    ref, *_ = tiny
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}
    cfg = laclip_config(state)
    assert cfg["embed_dim"] == 32 and cfg["quick_gelu"] is False
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    assert (v["image_size"], v["patch_size"], v["width"], v["layers"], v["head_width"],
            v["qk_norm"], v["no_ln_pre"], v["mlp_ratio"]) == (32, 8, 64, 2, 16, True, True, 4.0)
    assert v["norm_kwargs"] == {"eps": 1e-6}
    assert (t["context_length"], t["vocab_size"], t["width"], t["heads"], t["layers"]) == \
        (77, 49408, 64, 1, 2)
    w = laclip_to_open_clip(state)
    s = ref.state_dict()
    assert torch.equal(w["visual.positional_embedding"][0], s["visual.pos_embed"][0, 0])
    assert torch.allclose(w["visual.positional_embedding"][1:],
                          s["visual.pos_embed"][0, 1:] + s["visual.patch_embed.proj.bias"])
    assert w["visual.class_embedding"].shape == (64,)
    assert torch.equal(w["visual.transformer.resblocks.1.attn.ln_k.bias"],
                       s["visual.blocks.1.attn.k_norm.bias"])


# ---------------------------------------------------------------------------------------------
# errors


def test_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(ModelUnavailableError) as e:
        load_model("laclip:cc3m_laclip", resources=tmp_path)
    msg = str(e.value)
    expected = tmp_path / "models" / "laclip" / "cc3m_laclip.pt"
    assert str(expected) in msg and LACLIP_URL in msg and "Pre-trained models" in msg
    assert "cc3m_clip.pt" in msg and "CC3M" in msg
    assert LACLIP_URL == "https://github.com/LijieFan/LaCLIP"


def _extra(s):
    s["visual.blocks.0.attn.gate.weight"] = torch.zeros(4)


def _drop(s):
    del s["visual.blocks.1.norm2.bias"]


def _grid(s):
    s["visual.pos_embed"] = s["visual.pos_embed"][:, :13]


@pytest.mark.parametrize("edit, words", [
    (_extra, ["unexpected keys", "visual.blocks.0.attn.gate.weight"]),
    (_drop, ["missing keys", "visual.blocks.1.norm2.bias"]),
    (_grid, ["square", "13 tokens"]),
])
def test_unexpected_layout_is_a_value_error(tmp_path, edit, words):
    path = _save(_RefLaCLIP(qk_norm=True), tmp_path, "bad", edit=edit)
    with pytest.raises(ValueError) as e:
        load_model("laclip:bad", resources=tmp_path)
    assert str(path) in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_spec_and_load_kwargs():
    assert parse_model_spec("laclip:tiny_laclip") == ModelSpec("laclip", "tiny_laclip")
    assert slugify("laclip:tiny_laclip") == "laclip--tiny_laclip"
    assert unslugify("laclip--tiny_laclip") == "laclip:tiny_laclip"
    for bad in ("laclip:a/b", "laclip:../x"):
        with pytest.raises(ValueError, match="laclip:NAME"):
            parse_model_spec(bad)
    assert model_load({"resources": "/data/res"})["resources"] == "/data/res"
    assert model_load({})["resources"] == "resources"


def test_the_check_job_names_where_to_put_a_missing_file_and_marks_a_placed_one(tmp_path):
    from cliplens.core.jobs import run_check_checkpoint

    out = tmp_path / "models" / "laclip" / "tiny_laclip.ready"
    with pytest.raises(ModelUnavailableError, match="place it at .*tiny_laclip.pt"):
        run_check_checkpoint(spec="laclip:tiny_laclip", load={"resources": str(tmp_path)},
                             out=str(out))
    assert not out.exists()
    path = _save(_RefLaCLIP(qk_norm=True), tmp_path)
    got = run_check_checkpoint(spec="laclip:tiny_laclip", load={"resources": str(tmp_path)},
                               out=str(out))
    import hashlib
    import json

    assert json.loads(out.read_text()) == got
    assert got["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert got["embed_dim"] == 32 and got["file"] == "tiny_laclip.pt"
