"""The word-level tokenizer of the transformers toy models, built offline from the toy vocabulary.

Real SigLIP checkpoints ship a SentencePiece tokenizer downloaded from the Hub; the toy models
must build theirs without the network.  The toy world's language is closed (the phrases, caption
templates and zero-shot templates of :mod:`cliplens.core.toy.world`), so a word-level vocabulary over it
loses nothing: text is lower-cased, split into words and punctuation (``\\w+|[^\\w\\s]+``; a
hyphen is its own token), mapped to ids ([UNK] for a word outside the vocabulary), and ``[EOS]``
is appended, as SigLIP's tokenizer appends ``</s>``.  Ids: ``[PAD]`` 0, ``[UNK]`` 1, ``[EOS]`` 2,
then the words in sorted order.

SigLIP's text tower pools the *last* position, so text must be padded to the tower's length
(``padding="max_length"``) exactly as :class:`cliplens.core.models.hf_adapter.HFClipModel` does.
"""

from __future__ import annotations

import re
from typing import Iterable

from . import world

PAD, UNK, EOS = "[PAD]", "[UNK]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, EOS)

#: generic words beyond the toy world's own strings, for hand-written prompts
EXTRA_WORDS = (
    "a an the this that is it of on in at to and or with without photo picture image object "
    "shape thing something colour color coloured colored position size background left right "
    "top bottom centre center middle small large dark light"
)


def toy_texts() -> list[str]:
    """Every string of the toy world's language: phrases, caption and zero-shot templates
    (placeholders removed), factor value names and zero-shot class names."""
    texts: list[str] = [EXTRA_WORDS]
    for factor, values in world.PHRASES.items():
        for value, phrases in values.items():
            texts += [value, *phrases]
    for name in dir(world):
        obj = getattr(world, name)
        if name.endswith("TEMPLATES") or name.startswith(("RICH_TEMPLATES", "POOR_TEMPLATES")):
            items = obj.values() if isinstance(obj, dict) else [obj]
            for group in items:
                texts += [re.sub(r"\{[^}]*\}", " ", t) for t in group]
    for factor in (*world.FACTORS, "object"):
        texts += world.classnames(factor)
    return texts


def _pre_tokenizer():
    from tokenizers import normalizers, pre_tokenizers

    return normalizers.Lowercase(), pre_tokenizers.Whitespace()


def toy_vocabulary(texts: Iterable[str] | None = None) -> list[str]:
    """Sorted word list of ``texts`` (default :func:`toy_texts`) after normalisation and
    pre-tokenisation, special tokens excluded."""
    norm, pre = _pre_tokenizer()
    words: set[str] = set()
    for text in toy_texts() if texts is None else texts:
        words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    return sorted(words - set(SPECIAL_TOKENS))


def build_toy_tokenizer(max_length: int, texts: Iterable[str] | None = None):
    """A ``transformers.PreTrainedTokenizerFast`` over the toy vocabulary.

    ``tokenizer(texts, padding="max_length", truncation=True, max_length=max_length)`` gives
    ``[w_1, ..., w_k, EOS, PAD, ...]`` of length ``max_length`` (the words truncated so that EOS
    always fits).  ``model_max_length`` is set to ``max_length``.
    """
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in toy_vocabulary(texts):
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer, tok.pre_tokenizer = _pre_tokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=EOS,
        model_max_length=int(max_length),
        padding_side="right",
        truncation_side="right",
    )
