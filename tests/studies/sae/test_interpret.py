"""Describing features: the baseline's nearest texts, cleaning, flags, duplicates, scores."""

import numpy as np
import pandas as pd
import pytest
import torch

from cliplens.studies.sae.interpret import (clean, decoder_directions, detection_auc,
                                            duplicates, language_stats, nearest_texts,
                                            prompt_hash, quality_flags, random_negatives,
                                            requests_for)
from cliplens.studies.sae.variants import build_sae


@pytest.mark.parametrize("raw, language, want", [
    ("This image shows a red circle.", "en", "a red circle"),
    ("These nine images all show red circles on the left.", "en", "red circles on the left"),
    ("In these images, there are small stars", "en", "small stars"),
    ('"RGB noise."', "en", "RGB noise"),
    ("A red circle", "en", "a red circle"),
    ("They all share a dark background.", "en", "a dark background"),
    ("На изображении показан красный круг.", "ru", "красный круг"),
    ("На этих изображениях: синие звёзды", "ru", "синие звёзды"),
    ("Эти изображения объединяет жёлтый цвет", "ru", "жёлтый цвет"),
    ("Общее у них — маленькие объекты", "ru", "маленькие объекты"),
    ("  ", "en", ""),
])
def test_clean_strips_template_phrases(raw, language, want):
    assert clean(raw, language) == want


def test_quality_flags_and_duplicates():
    assert quality_flags("", "en", 50) == ["empty"]
    assert quality_flags("a red circle", "en", 50) == []
    assert quality_flags("a red circle", "ru", 50) == ["language"]
    assert quality_flags("красный круг", "en", 50) == ["language"]
    assert quality_flags("красный круг " * 10, "ru", 50) == ["too_long"]
    assert duplicates([3, 5, 7, 9], ["Red", "blue", "red", ""]) == [None, None, 3, None]


def test_nearest_texts_finds_the_planted_text_despite_a_shared_offset():
    rng = np.random.default_rng(0)
    d, n = 16, 10
    offset = 3 * rng.normal(size=d)  # what all texts share dwarfs what tells them apart
    texts = rng.normal(size=(n, d)) + offset
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    centred = texts - texts.mean(0)
    directions = centred[[4, 7, 1]] + 0.01 * rng.normal(size=(3, d))
    idx, cos = nearest_texts(directions, texts, k=2)
    assert idx[:, 0].tolist() == [4, 7, 1] and idx.shape == cos.shape == (3, 2)
    assert np.all(cos[:, 0] > 0.99) and np.all(cos[:, 0] >= cos[:, 1])


@pytest.mark.parametrize("kind", ["relu_l1", "topk"])
def test_decoder_directions_are_the_decoder_columns(kind):
    torch.manual_seed(0)
    sae = build_sae({"kind": kind, "d": 8, "m": 16, **({"k": 2} if kind == "topk" else {})})
    got = decoder_directions(sae)
    z = torch.zeros(3, 16)
    z[0, 5], z[1, 2], z[2, 9] = 2.0, 1.0, 0.5  # decoding is affine: decode(z) = decode(0) + z D
    want = sae.decode(z).detach().numpy() - sae.decode(torch.zeros(1, 16)).detach().numpy()
    assert got.shape == (16, 8)
    np.testing.assert_allclose(want, z.numpy() @ got, atol=1e-6)


def test_detection_auc_and_negatives():
    images = np.eye(4)[[0, 0, 0, 1, 2, 3, 1, 2]].astype(np.float32)
    text = np.array([1.0, 0, 0, 0])
    assert detection_auc(text, images, [0, 1, 2], [3, 4, 5, 6, 7]) == 1.0
    assert detection_auc(-text, images, [0, 1, 2], [3, 4, 5, 6, 7]) == 0.0
    assert detection_auc(text, images, [0, 3], [1, 4]) == 0.5
    neg = random_negatives(100, [1, 2, 3], 50, seed=0)
    assert len(set(neg)) == 50 and not set(neg) & {1, 2, 3}
    assert len(random_negatives(5, [0, 1], 50, seed=0)) == 3


def test_language_stats_count_per_language():
    table = pd.DataFrame({"language": ["en", "en", "ru", "ru"],
                          "text": ["a red circle", "a red circle", "", "круг"],
                          "flags": ["", "", "empty", ""], "duplicate_of": [None, 3, None, None],
                          "detection_auc": [0.9, 0.7, np.nan, 0.6],
                          "names_value": [True, False, None, True]})
    s = language_stats(table)
    assert s["en"]["descriptions"] == 2 and s["en"]["duplicates"] == 1
    assert s["en"]["distinct"] == 1 and s["en"]["auc_median"] == pytest.approx(0.8)
    assert s["en"]["names_value"] == 0.5 and s["ru"]["empty"] == 1
    assert s["ru"]["auc_median"] == pytest.approx(0.6) and s["ru"]["names_value"] == 1.0


def test_requests_change_key_with_the_prompt():
    a = requests_for([1, 2], ["en", "ru"], {"en": "describe", "ru": "опишите"}, "m", "i")
    b = requests_for([1], ["en"], {"en": "describe it"}, "m", "i")
    assert len(a) == 4 and {r["language"] for r in a} == {"en", "ru"}
    assert a[0]["prompt_hash"] == prompt_hash("describe", {}) != b[0]["prompt_hash"]
