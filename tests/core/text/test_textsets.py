"""Text sets for head explanations: built-in lists, files, embeddings."""

import numpy as np
import pytest
import torch

from cliplens.core.text import textsets
from cliplens.core.toy.world import PHRASES


def test_clip_words_are_whole_alphabetic_tokens_in_merge_order():
    from open_clip.tokenizer import SimpleTokenizer

    words = textsets.clip_vocabulary_words(2000)
    assert len(words) == 2000 and len(set(words)) == 2000
    assert all(w.isalpha() and len(w) >= 3 for w in words)
    enc = SimpleTokenizer().encoder
    assert all(enc[w + "</w>"] for w in words[:50])
    ranks = [enc[w + "</w>"] for w in words]
    assert ranks == sorted(ranks)  # frequent (early) merges first
    for common in ("the", "photo", "red", "dog"):
        assert common in textsets.clip_vocabulary_words(None)


def test_toy_text_sets_name_every_factor_value():
    words = textsets.toy_words()
    for factor in PHRASES.values():
        for phrases in factor.values():
            assert set(phrases) <= set(words)
    desc = textsets.toy_descriptions()
    assert "a red object" in desc and "a circle on the left" in desc and "a red circle" in desc
    assert len(desc) == len(set(desc))
    assert "an orange object" in desc


def test_russian_descriptions_are_parallel_and_name_the_same_values():
    from cliplens.core.toy.russian import names_value
    from cliplens.core.toy.world import FACTORS

    en, ru = textsets.toy_descriptions(), textsets.load_text_set("builtin:toy-descriptions-ru")
    values = textsets.description_values()
    assert len(en) == len(ru) == len(values) and len(set(ru)) == len(ru)
    assert ru[en.index("a red circle")] == "красный круг"
    assert ru[en.index("a small red object")] == "маленький красный объект"
    assert ru[en.index("a purple star")] == "фиолетовая звезда"  # feminine agreement
    assert ru[en.index("a ring on a light background")] == "кольцо на светлом фоне"
    for e, r, v in zip(en, ru, values):
        for factor, names in FACTORS.items():
            for name in names:  # each text names exactly the values it was built from
                want = v.get(factor) == name
                assert names_value(e, factor, name, "en") == want, (e, factor, name)
                assert names_value(r, factor, name, "ru") == want, (r, factor, name)
    assert names_value("Тёмный фон, на нём жёлтые звёзды", "colour", "yellow", "ru")
    assert names_value("a crimson disc", "colour", "red", "en")
    assert not names_value("a redwood", "colour", "red", "en")
    with pytest.raises(ValueError, match="language"):
        names_value("rot", "colour", "red", "de")


def test_text_files_and_bad_sources(tmp_path):
    f = tmp_path / "words.txt"
    f.write_text("# my words\nfur\n\n  stripes \nfur\n")
    assert textsets.load_text_set(f"file:{f}") == ["fur", "stripes"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no texts"):
        textsets.load_text_set(f"file:{tmp_path / 'empty.txt'}")
    with pytest.raises(ValueError, match="builtin:NAME"):
        textsets.load_text_set("builtin:imagenet-words")
    assert textsets.load_text_set("builtin:toy-words") == textsets.toy_words()


class Encoder:
    """A text tower stand-in: embedding = a fixed random vector per text, times its length."""

    def __init__(self):
        self.calls = []

    def encode_text(self, texts, normalize=False):
        self.calls.append(len(texts))
        rows = [np.random.default_rng(sum(map(ord, t))).normal(size=8) * len(t) for t in texts]
        return torch.tensor(np.stack(rows), dtype=torch.float16)


def test_embeddings_are_the_normalised_text_embeddings_in_order():
    enc = Encoder()
    texts = ["a red circle", "a blue square", "fur", "a red circle!"]
    emb = textsets.embed_texts(enc, texts, batch_size=3)
    assert enc.calls == [3, 1]
    assert emb.shape == (4, 8) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    ref = enc.encode_text(texts).float().numpy()
    np.testing.assert_allclose(emb, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)


def test_text_embeddings_round_trip_and_refuse_another_model(tmp_path):
    emb = np.random.default_rng(0).normal(size=(3, 4))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    path = tmp_path / "texts.npz"
    textsets.write_texts(path, "open_clip:tiny", ["a", "b c", "d"], ["words", "words", "file"], emb)
    texts, got, sources = textsets.read_texts(path, "open_clip:tiny")
    assert texts == ["a", "b c", "d"] and sources == ["words", "words", "file"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, emb, rtol=1e-6)
    with pytest.raises(ValueError, match="not open_clip:other"):
        textsets.read_texts(path, "open_clip:other")


def test_pooled_text_sets_keep_the_first_source_and_the_new_builtins():
    from cliplens.core.text.textsets import PASCAL_CONTEXT_59, load_text_set, pooled_text_sets

    assert len(PASCAL_CONTEXT_59) == len(set(PASCAL_CONTEXT_59)) == 59
    imagenet = load_text_set("builtin:imagenet-classes")
    assert len(imagenet) >= 990 and "goldfish" in imagenet
    texts, origin = pooled_text_sets(["builtin:pascal-context", "builtin:imagenet-classes"], None)
    assert texts[:59] == list(PASCAL_CONTEXT_59) and len(texts) == len(set(texts))
    assert origin[texts.index("bicycle")] == "builtin:pascal-context"
