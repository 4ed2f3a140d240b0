"""Zero-shot classifiers and accuracy, checked against hand computations."""

import zlib

import numpy as np
import pandas as pd
import pytest
import torch

from cliplens.core.models.base import ClipModel
from cliplens.core.text.zeroshot import (
    build_classifier,
    class_embeddings,
    predict,
    zeroshot_accuracy,
)

DIM = 12


class WordHashText(ClipModel):
    """Text side of a fake CLIP: a prompt's embedding is the sum of one fixed random vector per
    word (seeded by the word's CRC32); counts calls to check batching."""

    library, family, image_size, embed_dim = "fake", "clip", 8, DIM

    def __init__(self):
        self.spec, self.model, self.batches = "fake:words", torch.nn.Linear(1, 1), []

    def preprocess(self, images):
        raise NotImplementedError

    def encode_image(self, pixels, normalize=False):
        raise NotImplementedError

    def encode_text(self, texts, normalize=False):
        self.batches.append(len(texts))
        out = torch.stack([sum((self.word(w) for w in t.split()), torch.zeros(DIM))
                           for t in texts])
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out

    @staticmethod
    def word(w):
        return torch.randn(DIM, generator=torch.Generator().manual_seed(zlib.crc32(w.encode())))

    @property
    def vision_blocks(self):
        return []


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_classifier_is_the_normalised_mean_of_normalised_prompt_embeddings():
    model = WordHashText()
    classes, templates = ["cat", "dog"], ["a photo of a {}", "a {}", "my {} here"]
    w = build_classifier(model, classes, templates, batch_size=4).numpy()
    assert model.batches == [4, 2]  # 6 prompts in batches of at most 4
    hand = []
    for c in classes:
        prompts = [t.format(c) for t in templates]
        e = unit([sum(WordHashText.word(x).numpy() for x in p.split()) for p in prompts])
        hand.append(unit(e.mean(axis=0)))
    np.testing.assert_allclose(w, np.stack(hand), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1, atol=1e-6)


def test_images_equal_to_their_class_embeddings_are_all_right():
    model = WordHashText()
    w = build_classifier(model, ["cat", "dog"], ["a {}", "a photo of a {}"])
    labels = np.array([0, 1, 1, 0, 1])
    images = 3.0 * w.numpy()[labels]  # scale must not matter: scores are cosines
    res = zeroshot_accuracy(images, labels, w)
    assert res["top1"] == 1.0 and res["per_class"] == [1.0, 1.0] and res["n"] == 5
    assert res["top5"] is None and res["classes"] == 2  # fewer than 5 classes


def test_a_permuted_labelling_scores_what_we_count_by_hand():
    w = torch.tensor(unit([[1.0, 0.2, 0.0], [0.1, 1.0, 0.3]]), dtype=torch.float32)
    # six images look like class 0, four like class 1 ...
    images = np.concatenate([np.tile(w[0].numpy(), (6, 1)), np.tile(w[1].numpy(), (4, 1))])
    # ... but images 4 and 5 are labelled 1: 8 of 10 right; class 0: 4/4, class 1: 4/6
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    res = zeroshot_accuracy(images, labels, w)
    assert res["top1"] == pytest.approx(0.8)
    assert res["per_class"] == pytest.approx([1.0, 4 / 6])
    assert res["mean_per_class"] == pytest.approx((1.0 + 4 / 6) / 2)
    assert np.array_equal(predict(images, w), [0] * 6 + [1] * 4)


def test_top5_counts_a_label_among_the_five_best_scores():
    n_classes = 7
    w = torch.eye(n_classes)
    # image i prefers classes in the order 0 > 1 > ... > 6 (scores 7, 6, ..., 1)
    pref = np.arange(n_classes, 0, -1, dtype=np.float64)
    images = np.tile(pref, (4, 1))
    labels = np.array([0, 3, 4, 6])  # ranks 1, 4, 5, 7: top-1 1/4, top-5 3/4
    res = zeroshot_accuracy(images, labels, w)
    assert res["top1"] == pytest.approx(0.25) and res["top5"] == pytest.approx(0.75)
    assert res["per_class"][0] == 1.0 and res["per_class"][3] == 0.0
    assert res["per_class"][1] is None  # no image of class 1
    assert np.array_equal(predict(images[:1], w, k=5)[0], [0, 1, 2, 3, 4])


def test_accuracy_rejects_mismatched_inputs():
    w = torch.eye(3)
    with pytest.raises(ValueError, match="labels"):
        zeroshot_accuracy(np.eye(3), np.array([0, 1]), w)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        zeroshot_accuracy(np.eye(3), np.array([0, 1, 3]), w)
    with pytest.raises(ValueError, match="dim"):
        zeroshot_accuracy(np.ones((2, 4)), np.array([0, 1]), w)


def test_float16_embeddings_score_like_float32():
    rng = np.random.default_rng(0)
    w = torch.tensor(unit(rng.normal(size=(10, 32))), dtype=torch.float32)
    labels = rng.integers(0, 10, 200)
    images = w.numpy()[labels] + 0.3 * rng.normal(size=(200, 32))
    a = zeroshot_accuracy(images.astype(np.float32), labels, w)
    b = zeroshot_accuracy(images.astype(np.float16), labels, w)
    assert abs(a["top1"] - b["top1"]) <= 0.01 and a["top1"] > 0.5


def test_classifier_rejects_templates_without_one_placeholder():
    for bad in (["no placeholder"], [], ["{} and {}"]):
        with pytest.raises(ValueError, match="templates"):
            build_classifier(WordHashText(), ["cat"], bad)
    with pytest.raises(ValueError, match="class names"):
        build_classifier(WordHashText(), [], ["a {}"])


def _tiny_open_clip():
    import open_clip

    from cliplens.core.models.open_clip_adapter import OpenClipModel

    torch.manual_seed(0)
    net = open_clip.CLIP(
        embed_dim=16,
        vision_cfg={"image_size": 16, "layers": 1, "width": 32, "patch_size": 8,
                    "head_width": 16},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                  "layers": 1},
    )
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    return OpenClipModel("open_clip:tiny", net, transform=None, tokenizer=tok, family="clip",
                         embed_dim=16, text_batch_size=5)


def test_open_clip_helper_and_generic_path_agree():
    """open_clip.build_zero_shot_classifier (used for open_clip models) = our formula."""
    pytest.importorskip("cliplens.core.models.open_clip_adapter")
    model = _tiny_open_clip()
    classes, templates = ["red", "green", "blue"], ["a {} thing", "a photo of {}"]
    via_open_clip = build_classifier(model, classes, templates, batch_size=4)
    with torch.inference_mode():
        generic = class_embeddings(model.encode_text, classes, templates, batch_size=4)
    assert via_open_clip.shape == (3, 16)
    torch.testing.assert_close(via_open_clip, generic, atol=1e-6, rtol=1e-5)


def test_zeroshot_figure_is_written(tmp_path):
    from PIL import Image

    from cliplens.core.figures import zeroshot_figure

    table = pd.DataFrame({
        "model": ["toy:a", "toy:a", "toy:b", "toy:b"],
        "task": ["toy-colour", "toy-size", "toy-colour", "toy-size"],
        "top1": [0.97, 0.4, 0.5, 0.95], "top5": [1.0, None, 0.9, None],
        "n": [100] * 4, "classes": [8, 2, 8, 2],
    })
    out = tmp_path / "fig" / "zeroshot.png"
    zeroshot_figure(table, out)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 150
    assert [p.name for p in out.parent.iterdir()] == ["zeroshot.png"]
