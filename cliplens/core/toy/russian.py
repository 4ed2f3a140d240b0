"""The toy world's factor values in Russian, and whether a description names a factor value.

Study 002 describes features in English and Russian.  Offline, its baseline interpreter labels a
feature with a text of a text set and the parallel text of a Russian text set
(``builtin:toy-descriptions-ru``, built here from the same factor combinations as
``builtin:toy-descriptions``); its scoring asks whether a description, in either language,
names the factor value the feature's top images share (:func:`names_value`).

Russian adjectives agree with the noun's gender, so each colour and size is given by its stem
and its three nominative endings (masculine, feminine, neuter); shapes are nouns with a gender.
Matching a Russian description goes by word stems (``красн`` finds красный, красная, красного),
with ``ё`` read as ``е``.
"""

from __future__ import annotations

import re

from .world import PHRASES

#: shape -> (noun, gender 0 = masculine, 1 = feminine, 2 = neuter)
SHAPES_RU = {"circle": ("круг", 0), "square": ("квадрат", 0), "triangle": ("треугольник", 0),
             "cross": ("крест", 0), "star": ("звезда", 1), "ring": ("кольцо", 2)}
OBJECT_RU = ("объект", 0)
_HARD, _SOFT, _STRESSED = ("ый", "ая", "ое"), ("ий", "яя", "ее"), ("ой", "ая", "ое")
_VELAR = ("ий", "ая", "ое")  # after к, г, х: маленький, маленькая, маленькое
#: adjective value -> (stem, endings by gender)
ADJECTIVES_RU = {
    "colour": {"red": ("красн", _HARD), "green": ("зелён", _HARD), "blue": ("син", _SOFT),
               "yellow": ("жёлт", _HARD), "purple": ("фиолетов", _HARD),
               "orange": ("оранжев", _HARD), "cyan": ("бирюзов", _HARD),
               "white": ("бел", _HARD)},
    "size": {"small": ("маленьк", _VELAR), "large": ("больш", _STRESSED)},
}
#: adverbial value -> phrase
PHRASES_RU = {
    "position": {"left": "слева", "right": "справа", "top": "сверху", "bottom": "снизу",
                 "centre": "в центре"},
    "background": {"dark": "на тёмном фоне", "light": "на светлом фоне"},
}
#: factor value -> word stems that name it (synonyms included), ``ё`` written as ``е``
STEMS_RU = {
    "shape": {"circle": ("круг",), "square": ("квадрат",), "triangle": ("треугольн",),
              "cross": ("крест",), "star": ("звезд",), "ring": ("кольц",)},
    "colour": {"red": ("красн", "алый"), "green": ("зелен",), "blue": ("син",),
               "yellow": ("желт", "золот"), "purple": ("фиолет", "пурпур"),
               "orange": ("оранж",), "cyan": ("бирюз", "голуб"), "white": ("бел",)},
    "position": {"left": ("слева", "лев"), "right": ("справа", "прав"),
                 "top": ("сверху", "верх"), "bottom": ("снизу", "низ"),
                 "centre": ("центр", "середин")},
    "size": {"small": ("маленьк", "мал", "небольш", "крошечн"), "large": ("больш", "крупн")},
    "background": {"dark": ("темн", "черн"), "light": ("светл", "сер")},
}


def adjective_ru(factor: str, value: str, gender: int) -> str:
    """The nominative form of a colour or size agreeing with a noun of ``gender``."""
    stem, endings = ADJECTIVES_RU[factor][value]
    return stem + endings[gender]


def describe_ru(values: dict[str, str]) -> str:
    """A Russian noun phrase naming ``values`` (factor -> value name), in the word order of the
    English toy descriptions: size, colour, shape (or объект), position, background."""
    noun, gender = SHAPES_RU[values["shape"]] if "shape" in values else OBJECT_RU
    words = [adjective_ru(f, values[f], gender) for f in ("size", "colour") if f in values]
    words.append(noun)
    words += [PHRASES_RU[f][values[f]] for f in ("position", "background") if f in values]
    return " ".join(words)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower().replace("ё", "е"))


def names_value(text: str, factor: str, value: str, language: str) -> bool:
    """Whether ``text`` names ``value`` of ``factor``: in English any phrase of the toy captions
    for it (synonyms included) as whole words; in Russian a word starting with one of its
    stems."""
    if language == "en":
        padded = " " + text.lower() + " "
        return any(re.search(r"(?<![\w-])" + re.escape(p) + r"(?![\w-])", padded)
                   for p in PHRASES[factor][value])
    if language == "ru":
        stems = STEMS_RU[factor][value]
        return any(w.startswith(s) for w in _words(text) for s in stems)
    raise ValueError(f"no toy vocabulary for language {language!r} (en, ru)")
