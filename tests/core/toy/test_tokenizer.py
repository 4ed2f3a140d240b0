"""The toy word-level tokenizer covers the toy language and pads to a fixed length."""

from __future__ import annotations

import numpy as np

from cliplens.core.toy import world
from cliplens.core.toy.tokenizer import build_toy_tokenizer, toy_vocabulary


def test_toy_tokenizer_covers_the_toy_language_and_pads_to_max_length():
    tok = build_toy_tokenizer(24)
    unk = tok.convert_tokens_to_ids("[UNK]")
    texts = [t.format(c) for f in world.ZEROSHOT_TEMPLATES
             for c in world.classnames(f) for t in world.ZEROSHOT_TEMPLATES[f]]
    rng = np.random.default_rng(0)
    labels = world.sample_labels(200, rng)
    texts += [world.rich_caption({f: int(labels[f][i]) for f in labels}, rng) for i in range(200)]
    enc = tok(texts, padding="max_length", truncation=True, max_length=24)["input_ids"]
    assert all(len(ids) == 24 for ids in enc)
    assert not any(unk in ids for ids in enc)
    eos = tok.convert_tokens_to_ids("[EOS]")
    assert all(ids.count(eos) == 1 for ids in enc)
    assert "crimson" in toy_vocabulary() and "[PAD]" not in toy_vocabulary()
