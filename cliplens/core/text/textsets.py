"""Text sets that explain heads (study 001): word lists and descriptions, and their embeddings.

A text set is a list of strings.  Sources (``load_text_set``):

* ``file:PATH`` — one text per line (blank lines and lines starting with ``#`` skipped);
* ``builtin:clip-words`` — a general word list derived offline from the BPE vocabulary that
  ships with open_clip: tokens that end a word (``</w>``), alphabetic, at least ``min_len``
  letters and with a vowel, in merge order (earlier merges are more frequent words).  Some are
  word endings rather than words (``ation``); TextSpan simply never picks what no head writes;
* ``builtin:toy-words`` — every phrase the toy world's captions use for a factor value
  (canonical names and synonyms: ``crimson``, ``disc``, ``at the left side`` ...);
* ``builtin:toy-descriptions`` — short descriptions naming one or two factors
  (``a red object``, ``a circle on the left``, ``a small shape on a dark background`` ...);
* ``builtin:toy-descriptions-ru`` — the same descriptions in Russian, item for item;
* ``builtin:imagenet-classes`` — the 1,000 ImageNet class names open_clip ships;
* ``builtin:pascal-context`` — the 59 PASCAL Context classes of its segmentation benchmark.

Embeddings are unit-norm text embeddings of the model being explained (``embed_texts``).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Sequence

import numpy as np

BUILTIN = ("clip-words", "imagenet-classes", "pascal-context", "toy-words", "toy-descriptions",
           "toy-descriptions-ru")

#: the 59 classes of PASCAL Context's segmentation benchmark (Mottaghi et al., 2014)
PASCAL_CONTEXT_59 = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person",
    "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood")


def clip_vocabulary_words(n: int | None = 5000, min_len: int = 3) -> list[str]:
    """The first ``n`` (None = all) word-final, alphabetic BPE tokens of open_clip's tokenizer
    with at least ``min_len`` letters and a vowel, lower-case, without duplicates."""
    from open_clip.tokenizer import SimpleTokenizer

    out: list[str] = []
    seen = set()
    for tok in SimpleTokenizer().encoder:  # insertion order: bytes, then merges by rank
        if not tok.endswith("</w>"):
            continue
        w = tok[:-4]
        if len(w) < min_len or not w.isalpha() or not w.isascii() or w in seen:
            continue
        if not any(c in "aeiouy" for c in w):
            continue
        seen.add(w)
        out.append(w)
        if n is not None and len(out) >= n:
            break
    return out


def toy_words() -> list[str]:
    """Every phrase of the toy world's captions (cliplens.core.toy.world.PHRASES), factor by factor."""
    from ..toy.world import PHRASES

    out = [p for factor in PHRASES.values() for phrases in factor.values() for p in phrases]
    return list(dict.fromkeys(out))


def description_values() -> list[dict[str, str]]:
    """The factor values each toy description names (canonical value names), in order: one
    factor (each colour, shape, position, size, background), then the pairs colour x shape,
    shape x position, size x colour and shape x background."""
    from ..toy.world import FACTORS

    pairs = (("colour", "shape"), ("shape", "position"), ("size", "colour"),
             ("shape", "background"))
    out = [{f: v} for f in ("colour", "shape", "position", "size", "background")
           for v in FACTORS[f]]
    for a, b in pairs:
        out += [{a: u, b: v} for u, v in itertools.product(FACTORS[a], FACTORS[b])]
    return out


def _describe_en(values: dict[str, str]) -> str:
    from ..toy.world import PHRASES

    name = {f: PHRASES[f][v][0] for f, v in values.items()}
    noun = name.get("shape", "object")
    adjectives = [name[f] for f in ("size", "colour") if f in name]
    words = [*adjectives, noun, *[name[f] for f in ("position", "background") if f in name]]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def toy_descriptions(language: str = "en") -> list[str]:
    """Descriptions naming one factor (``a red object``, ``a circle``, ``an object on the
    left``, ``a small object``, ``an object on a dark background``) or a pair of factors
    (``a red circle``, ``a circle on the left``, ``a small red object`` ...), canonical names;
    ``language="ru"`` gives the parallel Russian texts (``красный объект``, ``красный круг``,
    ``круг слева`` ...; :mod:`cliplens.core.toy.russian`), item for item."""
    from ..toy.russian import describe_ru

    render = {"en": _describe_en, "ru": describe_ru}[language]
    return [render(v) for v in description_values()]


def text_factors(text: str) -> set[str]:
    """The toy factors a text names: phrases of the toy captions (any synonym) found as whole
    words, longest phrases first and each span used once (``a circle on a pale backdrop`` names
    shape and background; its ``pale`` is not also read as the colour white)."""
    import re

    from ..toy.world import PHRASES

    phrases = sorted(((p, f) for f, values in PHRASES.items() for ps in values.values()
                      for p in ps), key=lambda x: -len(x[0]))
    rest = " " + text.lower() + " "
    found = set()
    for phrase, factor in phrases:
        pattern = r"(?<![\w-])" + re.escape(phrase) + r"(?![\w-])"
        if re.search(pattern, rest):
            found.add(factor)
            rest = re.sub(pattern, " | ", rest)
    return found


def read_text_file(path: str | os.PathLike) -> list[str]:
    """Texts of a file, one per line; blank lines and ``#`` comments skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    texts = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
    if not texts:
        raise ValueError(f"{path}: no texts (one per line expected)")
    return list(dict.fromkeys(texts))


def load_text_set(source: str, n_words: int | None = 5000) -> list[str]:
    """Texts of ``source``: ``file:PATH`` or ``builtin:NAME`` (NAME in :data:`BUILTIN`)."""
    kind, _, arg = source.partition(":")
    if kind == "file" and arg:
        return read_text_file(arg)
    if kind == "builtin":
        if arg == "clip-words":
            return clip_vocabulary_words(n_words)
        if arg == "imagenet-classes":
            from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

            return list(dict.fromkeys(IMAGENET_CLASSNAMES))
        if arg == "pascal-context":
            return list(PASCAL_CONTEXT_59)
        if arg == "toy-words":
            return toy_words()
        if arg == "toy-descriptions":
            return toy_descriptions()
        if arg == "toy-descriptions-ru":
            return toy_descriptions("ru")
    raise ValueError(f"unknown text set {source!r}: use file:PATH or builtin:NAME with NAME in "
                     f"{BUILTIN}")


def embed_texts(model, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Unit-norm text embeddings [len(texts), D] (float32) of ``model`` (a ClipModel)."""
    import torch

    parts = []
    with torch.inference_mode():
        for a in range(0, len(texts), batch_size):
            e = model.encode_text(list(texts[a:a + batch_size]), normalize=True)
            parts.append(torch.nn.functional.normalize(e.float(), dim=-1).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def write_texts(path: str | os.PathLike, spec: str, texts: Sequence[str],
                sources: Sequence[str], embeddings: np.ndarray) -> None:
    """A text set embedded by model ``spec`` (npz: ``texts``, ``sources``, ``embeddings``
    [M, D] float32, ``model``), written atomically."""
    from ..io import write_npz

    write_npz(path, {"texts": np.asarray(list(texts)), "sources": np.asarray(list(sources)),
                     "embeddings": np.asarray(embeddings, np.float32),
                     "model": np.asarray(spec)})


def read_texts(path: str | os.PathLike, spec: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(texts, unit-norm embeddings [M, D], source of each text) of :func:`write_texts`;
    refuses embeddings of another model."""
    with np.load(path, allow_pickle=False) as z:
        if str(z["model"]) != spec:
            raise ValueError(f"{path}: text embeddings of {z['model']}, not {spec}")
        return [str(t) for t in z["texts"]], z["embeddings"].astype(np.float32), \
            [str(s) for s in z["sources"]]


def pooled_text_sets(sources: Sequence[str], n_words: int | None) -> tuple[list[str], list[str]]:
    """(texts, source of each) of ``sources`` pooled in order, duplicates dropped (the first
    source that gives a text keeps it)."""
    texts, origin, seen = [], [], set()
    for src in sources:
        for t in load_text_set(src, n_words):
            if t not in seen:
                seen.add(t)
                texts.append(t)
                origin.append(src)
    return texts, origin
