"""Describing SAE features in words, cleaning the descriptions and scoring them.

* :func:`nearest_texts` is the offline baseline interpreter: a feature is labelled with the
  text of a text set whose CLIP text embedding lies nearest its decoder direction;
* :func:`clean`, :func:`quality_flags`, :func:`duplicates` and :func:`language_stats` tidy and
  count the descriptions of any interpreter;
* :func:`detection_auc` scores a description: how well its CLIP text embedding ranks the
  feature's top images above random images.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Mapping, Sequence

import numpy as np

#: template lead-ins stripped from a description (matched at its start, case-insensitive)
TEMPLATES = {
    "en": [
        r"(all|each of)?\s*(the|these|this|those)\s+(nine\s+|9\s+)?(images?|pictures?|photos?|"
        r"collage|tiles?)\s+(all\s+)?(shows?|depicts?|contains?|features?|displays?|share|"
        r"have in common|are of|is of)\b\s*(that\s+)?",
        r"(in|on)\s+(the|these|this)\s+(images?|pictures?|photos?|collage)\b,?\s*(there\s+(is|are)\s+)?",
        r"(they|it)\s+(all\s+)?(shows?|depicts?|contains?|features?|share)\b\s*",
        r"(what\s+)?(they|these images)\s+have\s+in\s+common\s+is\s*",
        r"common (theme|feature|element):\s*",
    ],
    "ru": [
        r"(на|во?)\s+(этом|этих|данном|данных|всех)?\s*(девяти\s+)?(изображени[ияхе]+|картинк[аеих]+|"
        r"фото(графи[ияхе]+)?|коллаже)\b\s*(все(гда)?\s+)?((показан[аоы]?|изображен[аоы]?|видн[аоы]?|"
        r"виден|представлен[аоы]?|есть)\b)?[:,]?\s*",
        r"(эти|все)\s+(девять\s+)?(изображения|картинки|фото(графии)?)\s+(показывают|изображают|"
        r"объединяет|объединяют)\b\s*",
        r"(это|этот коллаж|изображение)\s+(показывает|изображает)\b\s*",
        r"(общее|общим)\s*(у них|для них|у этих изображений)?\s*(—|-|:|это)\s*",
        r"(здесь|тут)\s+(показан[аоы]?|изображен[аоы]?)\b\s*",
    ],
}

FLAGS = ("empty", "too_long", "language", "cut")


def prompt_hash(*parts: Any) -> str:
    """The first 16 hex digits of the SHA-256 of ``parts`` as JSON: the journal's prompt key."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode()
                          ).hexdigest()[:16]


def nearest_texts(directions: np.ndarray, texts: np.ndarray, k: int = 1
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` texts nearest each feature direction: with T [n, d] the text embeddings
    centred on their mean and renormalised (the shared text offset removed, as in TextSpan)
    and U [m, d] the unit directions, the indices of the ``k`` largest entries of each row of
    U Tᵀ and those cosines, both [m, k], best first."""
    t = texts - texts.mean(0, keepdims=True)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    u = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    cos = u @ t.T
    idx = np.argsort(-cos, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(cos, idx, axis=1)


def decoder_directions(sae) -> np.ndarray:
    """Each feature's direction in the input space [m, d]: decode(e_j) - decode(0), which is
    the j-th decoder column for every linear decoder (biases cancel)."""
    import torch

    sae.eval()
    with torch.no_grad():
        eye = torch.eye(sae.m)
        return (sae.decode(eye) - sae.decode(torch.zeros(1, sae.m))).numpy()


def clean(text: str, language: str) -> str:
    """``text`` without surrounding quotes and white space, without the template lead-ins of
    :data:`TEMPLATES` (repeatedly), its first letter in lower case (unless the first word is
    an acronym) and no final full stop."""
    s = " ".join(str(text).split()).strip(" \"'«»“”")
    for _ in range(3):
        before = s
        for pattern in TEMPLATES.get(language, []):
            s = re.sub(r"^\s*" + pattern, "", s, flags=re.IGNORECASE).strip(" \"'«»“”:,—-")
        if s == before:
            break
    s = s.rstrip(" .!")
    first = s.split(" ", 1)[0]
    return s if len(first) > 1 and first.isupper() else s[:1].lower() + s[1:]


def cyrillic_share(text: str) -> float:
    """The share of Cyrillic letters among the letters of ``text`` (0 when none)."""
    letters = [c for c in text if c.isalpha()]
    return sum("а" <= c.lower() <= "я" or c in "ёЁ" for c in letters) / max(1, len(letters))


def quality_flags(text: str, language: str, max_chars: int) -> list[str]:
    """Of :data:`FLAGS` (``cut``, an answer stopped at ``max_tokens``, is added by the job):
    ``empty`` (nothing left after cleaning), ``too_long`` (more than
    ``max_chars`` characters), ``language`` (Russian with under half its letters Cyrillic, or
    English with over a fifth)."""
    if not text.strip():
        return ["empty"]
    out = []
    if len(text) > max_chars:
        out.append("too_long")
    share = cyrillic_share(text)
    if (language == "ru" and share < 0.5) or (language == "en" and share > 0.2):
        out.append("language")
    return out


def duplicates(features: Sequence[int], texts: Sequence[str]) -> list[int | None]:
    """For each description, the first feature whose description is the same text
    (case-insensitive), when that is another feature; else None."""
    first: dict[str, int] = {}
    out: list[int | None] = []
    for j, t in zip(features, texts):
        key = t.casefold()
        if not key:
            out.append(None)
            continue
        out.append(first[key] if key in first and first[key] != j else None)
        first.setdefault(key, j)
    return out


def detection_auc(text: np.ndarray, images: np.ndarray, positives: Sequence[int],
                  negatives: Sequence[int]) -> float:
    """ROC AUC of the scores ``images @ text`` (images [N, d], text [d]) separating the rows
    ``positives`` (a feature's top images) from ``negatives`` (random images): 1 ranks every
    top image first, 0.5 is chance."""
    from sklearn.metrics import roc_auc_score

    pos, neg = np.asarray(positives, int), np.asarray(negatives, int)
    scores = images[np.concatenate([pos, neg])] @ np.asarray(text, dtype=images.dtype)
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(labels, scores))


def random_negatives(n: int, exclude: Sequence[int], count: int, seed: int) -> np.ndarray:
    """``count`` distinct rows of range(n) outside ``exclude``, drawn with ``seed``."""
    allowed = np.setdiff1d(np.arange(n), np.asarray(exclude, int))
    rng = np.random.default_rng(seed)
    return rng.choice(allowed, size=min(count, len(allowed)), replace=False)


def language_stats(table) -> dict[str, dict[str, Any]]:
    """Per language of ``table`` (columns language, text, flags, duplicate_of and, when
    present, detection_auc and names_value): descriptions, each flag's count, duplicates,
    distinct texts, median characters and words, the detection AUC's median and quartiles and
    the share naming the factor value its top images share."""
    out: dict[str, dict[str, Any]] = {}
    for lang, t in table.groupby("language", sort=True):
        texts = t["text"].fillna("").astype(str)
        flags = t["flags"].fillna("").astype(str)
        s: dict[str, Any] = {"descriptions": int(len(t)),
                             **{f: int(flags.str.contains(f).sum()) for f in FLAGS},
                             "duplicates": int(t["duplicate_of"].notna().sum()),
                             "distinct": int(texts.str.casefold().nunique()),
                             "median_chars": float(texts.str.len().median()),
                             "median_words": float(texts.str.split().str.len().median())}
        if "detection_auc" in t and t["detection_auc"].notna().any():
            auc = t["detection_auc"].dropna().to_numpy()
            s.update({"auc_median": float(np.median(auc)),
                      "auc_quartiles": [float(q) for q in np.percentile(auc, [25, 75])],
                      "auc_above_0.75": float((auc > 0.75).mean())})
        if "names_value" in t and t["names_value"].notna().any():
            s["names_value"] = float(t["names_value"].dropna().astype(bool).mean())
        out[str(lang)] = s
    return out


def requests_for(features: Sequence[int], languages: Sequence[str],
                 prompts: Mapping[str, str], model: str, interpreter: str,
                 extra: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One journal request per feature and language (the key fields and the prompt)."""
    out = []
    for lang in languages:
        h = prompt_hash(prompts[lang], dict(extra or {}))
        out += [{"feature": int(j), "language": lang, "prompt": prompts[lang],
                 "prompt_hash": h, "model": model, "interpreter": interpreter}
                for j in features]
    return out
