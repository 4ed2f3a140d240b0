"""The toy world: images drawn with numpy, with known factors, masks and captions.

Each image shows one object on a background.  Its factors are drawn independently (unless a
derived dataset couples them) and stored as integer labels:

====================  ===========================================================
factor                values
====================  ===========================================================
shape                 circle, square, triangle, cross, star, ring
colour                red, green, blue, yellow, purple, orange, cyan, white
position              left, right, top, bottom, centre (centre jittered)
size                  small, large
background            dark, light (optionally textured)
====================  ===========================================================

The object's pixel mask is stored too, so segmentation has ground truth.  Rich captions name
every factor through paraphrase templates and synonyms; poor captions name the shape and
sometimes the colour (the toy counterpart of CLIP vs LaCLIP captions).

Everything is deterministic in the seed: the same config always draws the same pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
from matplotlib.path import Path as _MplPath

SHAPES = ("circle", "square", "triangle", "cross", "star", "ring")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white")
POSITIONS = ("left", "right", "top", "bottom", "centre")
SIZES = ("small", "large")
BACKGROUNDS = ("dark", "light")

#: factor name -> value names, in label order.
FACTORS: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "position": POSITIONS,
    "size": SIZES,
    "background": BACKGROUNDS,
}

COLOUR_RGB = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (40, 60, 230),
    "yellow": (235, 220, 40),
    "purple": (150, 40, 190),
    "orange": (245, 140, 20),
    "cyan": (40, 215, 225),
    "white": (250, 250, 250),
}

#: position -> (x, y) centre as a fraction of the image side.
POSITION_XY = {
    "left": (0.28, 0.5),
    "right": (0.72, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
    "centre": (0.5, 0.5),
}
#: size -> object radius as a fraction of the image side.
SIZE_RADIUS = {"small": 0.13, "large": 0.22}

# Natural-language phrases.  The first entry of each list is the canonical phrase used as the
# zero-shot class name; the others are synonyms used only in rich captions.
PHRASES: dict[str, dict[str, list[str]]] = {
    "shape": {
        "circle": ["circle", "disc", "round dot"],
        "square": ["square", "box", "block"],
        "triangle": ["triangle", "wedge", "three-sided shape"],
        "cross": ["cross", "plus sign", "plus"],
        "star": ["star", "five-pointed star", "starlet"],
        "ring": ["ring", "hoop", "donut"],
    },
    "colour": {
        "red": ["red", "crimson", "scarlet"],
        "green": ["green", "emerald", "grass-green"],
        "blue": ["blue", "navy", "azure"],
        "yellow": ["yellow", "golden", "lemon"],
        "purple": ["purple", "violet", "magenta"],
        "orange": ["orange", "tangerine", "amber"],
        "cyan": ["cyan", "turquoise", "aqua"],
        "white": ["white", "snow-white", "pale"],
    },
    "position": {
        "left": ["on the left", "at the left side", "to the left"],
        "right": ["on the right", "at the right side", "to the right"],
        "top": ["at the top", "near the top edge", "up high"],
        "bottom": ["at the bottom", "near the bottom edge", "down low"],
        "centre": ["in the centre", "in the middle", "at the center"],
    },
    "size": {
        "small": ["small", "little", "tiny"],
        "large": ["large", "big", "huge"],
    },
    "background": {
        "dark": ["on a dark background", "against black", "on a dark backdrop"],
        "light": ["on a light background", "against grey", "on a pale backdrop"],
    },
}

RICH_TEMPLATES = (
    "a {size} {colour} {shape} {position} {background}",
    "a photo of a {size} {colour} {shape} {position} {background}",
    "there is a {colour} {shape} {position} {background}, and it is {size}",
    "{position}: a {size} {colour} {shape} {background}",
    "a {colour} {shape} {background}, {size}, {position}",
)
#: partial captions (training only): the rich templates that stay grammatical with factors
#: left out (no "and it is {size}", no comma lists).  The third is used only when the position
#: is named.
PARTIAL_TEMPLATES = (RICH_TEMPLATES[0], RICH_TEMPLATES[1], RICH_TEMPLATES[3])
#: the noun of a partial caption that does not name the shape; none is a word of the zero-shot
#: templates ("object", "thing", "something", "shape"; of these only "shape" occurs in a caption,
#: in the triangle's synonym "three-sided shape").
GENERIC_NOUNS = ("figure", "item", "mark")
POOR_TEMPLATES_SHAPE = ("a {shape}", "a photo of a {shape}")
POOR_TEMPLATES_COLOUR = ("a {colour} {shape}", "a photo of a {colour} {shape}")

#: zero-shot suites over the toy images: suite -> (factor or 'object', templates).
ZEROSHOT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": ("a {}", "a photo of a {}", "a picture of a {}", "there is a {}"),
    "colour": ("a {} object", "a photo of a {} shape", "something {}", "a {} thing"),
    "position": ("an object {}", "a shape {}", "a photo of something {}", "a thing {}"),
    "size": ("a {} object", "a photo of a {} shape", "a {} thing", "something {}"),
    "background": ("an object {}", "a shape {}", "a photo of something {}", "a thing {}"),
    "object": ("a {}", "a photo of a {}", "there is a {}", "a picture of a {}"),
}


def classnames(factor: str) -> list[str]:
    """Canonical zero-shot class names of ``factor`` (or ``'object'`` = colour x shape)."""
    if factor == "object":
        return [f"{c} {s}" for c in COLOURS for s in SHAPES]
    return [PHRASES[factor][v][0] for v in FACTORS[factor]]


def object_label(colour: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Label of the colour x shape suite, matching :func:`classnames('object')`."""
    return np.asarray(colour) * len(SHAPES) + np.asarray(shape)


@dataclass(frozen=True)
class WorldParams:
    """Parameters of the toy image generator.

    ``noise`` is the standard deviation of Gaussian pixel noise in 0..255 units;
    ``colour_jitter`` the half-width of a uniform per-image shift of the object's RGB;
    ``position_jitter`` the half-width of a uniform shift of its centre, as a fraction of the side.
    """

    image_size: int = 64
    noise: float = 6.0
    colour_jitter: int = 18
    position_jitter: float = 0.05
    textured_background: bool = False


def _unit_polygon(name: str) -> np.ndarray | None:
    if name == "triangle":
        return np.array([[0.0, -1.0], [0.866, 0.5], [-0.866, 0.5]])  # inscribed, equilateral
    if name == "star":
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    return None


_POLYGONS = {n: _MplPath(p) for n in ("triangle", "star") if (p := _unit_polygon(n)) is not None}


def shape_mask(shape: str, size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """Boolean mask [size, size] of ``shape`` centred at pixel (cx, cy) with ``radius`` pixels.

    Pixel (row i, column j) is inside when its centre (j + 0.5, i + 0.5), expressed in units of
    ``radius`` around (cx, cy) as (u, v), satisfies the shape's inequality:
    circle u^2+v^2 <= 1; ring 0.55^2 <= u^2+v^2 <= 1; square max(|u|,|v|) <= 0.8;
    cross min(|u|,|v|) <= 0.3 and max(|u|,|v|) <= 0.95; triangle and star by polygon containment.
    """
    coords = (np.arange(size) + 0.5 - np.array([[cy], [cx]])) / radius  # [2, size]
    v = coords[0][:, None]
    u = coords[1][None, :]
    r2 = u * u + v * v
    if shape == "circle":
        return r2 <= 1.0
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return (np.minimum(au, av) <= 0.3) & (np.maximum(au, av) <= 0.95)
    if shape in _POLYGONS:
        uu, vv = np.broadcast_arrays(u, v)
        pts = np.stack([uu.ravel(), vv.ravel()], axis=1)
        return _POLYGONS[shape].contains_points(pts).reshape(size, size)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render(
    labels: Mapping[str, int], rng: np.random.Generator, params: WorldParams = WorldParams()
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image.  Returns (image uint8 [S, S, 3], mask bool [S, S])."""
    s = params.image_size
    shape = SHAPES[labels["shape"]]
    colour = COLOURS[labels["colour"]]
    position = POSITIONS[labels["position"]]
    size = SIZES[labels["size"]]
    background = BACKGROUNDS[labels["background"]]

    fx, fy = POSITION_XY[position]
    j = params.position_jitter
    cx = (fx + rng.uniform(-j, j)) * s
    cy = (fy + rng.uniform(-j, j)) * s
    radius = SIZE_RADIUS[size] * s * rng.uniform(0.92, 1.08)
    mask = shape_mask(shape, s, cx, cy, radius)

    base = rng.uniform(15, 60) if background == "dark" else rng.uniform(150, 200)
    img = np.full((s, s, 3), base, dtype=np.float32)
    img += rng.uniform(-8, 8, size=3).astype(np.float32)  # slight background tint
    if params.textured_background:
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
        f = rng.uniform(2, 6, size=2)
        ph = rng.uniform(0, 2 * np.pi, size=2)
        tex = np.sin(2 * np.pi * f[0] * xx + ph[0]) * np.sin(2 * np.pi * f[1] * yy + ph[1])
        img += 14.0 * tex[..., None]
    rgb = np.asarray(COLOUR_RGB[colour], dtype=np.float32)
    rgb = rgb + rng.integers(-params.colour_jitter, params.colour_jitter + 1, size=3)
    img[mask] = rgb
    img += rng.normal(0.0, params.noise, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiou])")


def fix_articles(text: str) -> str:
    """'a amber disc' -> 'an amber disc'."""
    return _ARTICLE.sub(lambda m: m.group(1) + "n ", text)


def rich_caption(labels: Mapping[str, int], rng: np.random.Generator) -> str:
    """A caption naming every factor, with a random template and random synonyms."""
    words = {f: rng.choice(PHRASES[f][FACTORS[f][labels[f]]]) for f in FACTORS}
    return fix_articles(str(rng.choice(RICH_TEMPLATES)).format(**words))


def poor_caption(labels: Mapping[str, int], rng: np.random.Generator, p_colour: float = 0.5) -> str:
    """A caption naming the shape (canonical word) and, with probability ``p_colour``, the colour."""
    shape = PHRASES["shape"][SHAPES[labels["shape"]]][0]
    if rng.random() < p_colour:
        colour = PHRASES["colour"][COLOURS[labels["colour"]]][0]
        return fix_articles(
            str(rng.choice(POOR_TEMPLATES_COLOUR)).format(colour=colour, shape=shape)
        )
    return str(rng.choice(POOR_TEMPLATES_SHAPE)).format(shape=shape)


def partial_caption(labels: Mapping[str, int], named: Iterable[str],
                    rng: np.random.Generator) -> str:
    """A caption naming only the factors in ``named`` (random template and synonyms); without
    the shape its noun is one of :data:`GENERIC_NOUNS`: e.g. ``{"colour", "position"}`` ->
    "a crimson item at the left side"."""
    named = set(named)
    unknown = named - set(FACTORS)
    if unknown:
        raise ValueError(f"unknown factors {sorted(unknown)}; have {list(FACTORS)}")
    words = {f: str(rng.choice(PHRASES[f][FACTORS[f][labels[f]]])) if f in named else ""
             for f in FACTORS}
    words["shape"] = words["shape"] or str(rng.choice(GENERIC_NOUNS))
    templates = PARTIAL_TEMPLATES if "position" in named else PARTIAL_TEMPLATES[:2]
    text = re.sub(r"\s+", " ", str(rng.choice(templates)).format(**words)).strip()
    return fix_articles(text)


def partial_captions(labels: Mapping[str, np.ndarray], rng: np.random.Generator,
                     max_factors: int = 4) -> tuple[list[str], np.ndarray]:
    """One partial caption per image: k ~ U{1..max_factors} factors chosen uniformly without
    replacement, then :func:`partial_caption`.  ``labels``: factor -> [N] ints (every factor of
    :data:`FACTORS`).  Returns (N captions, ``named`` bool [N, F]: which factors each names,
    columns in :data:`FACTORS` order)."""
    names = list(FACTORS)
    if not 1 <= max_factors <= len(names):
        raise ValueError(f"max_factors must be in 1..{len(names)}, got {max_factors}")
    cols = {f: np.asarray(labels[f]) for f in names}
    n = len(cols[names[0]])
    named = np.zeros((n, len(names)), dtype=bool)
    texts = []
    for i in range(n):
        pick = rng.choice(len(names), int(rng.integers(1, max_factors + 1)), replace=False)
        named[i, pick] = True
        texts.append(partial_caption({f: int(cols[f][i]) for f in names},
                                     {names[j] for j in pick}, rng))
    return texts, named


@dataclass
class Split:
    """One split of a toy dataset, all arrays in memory."""

    images: np.ndarray  # uint8 [N, S, S, 3]
    masks: np.ndarray  # bool [N, S, S]
    labels: dict[str, np.ndarray]  # factor -> int16 [N]
    captions_rich: list[str]
    captions_poor: list[str]
    extra_images: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. rb_swap

    def __len__(self) -> int:
        return len(self.images)


def sample_labels(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Independent uniform factor labels for ``n`` images."""
    return {f: rng.integers(0, len(v), size=n).astype(np.int16) for f, v in FACTORS.items()}


def draw_split(
    labels: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    params: WorldParams = WorldParams(),
    p_colour_poor: float = 0.5,
) -> Split:
    """Render every image whose factors are given by ``labels`` (factor -> int array [N])."""
    n = len(next(iter(labels.values())))
    s = params.image_size
    images = np.empty((n, s, s, 3), dtype=np.uint8)
    masks = np.empty((n, s, s), dtype=bool)
    rich, poor = [], []
    for i in range(n):
        lab = {f: int(labels[f][i]) for f in FACTORS}
        images[i], masks[i] = render(lab, rng, params)
        rich.append(rich_caption(lab, rng))
        poor.append(poor_caption(lab, rng, p_colour_poor))
    return Split(images, masks, {f: np.asarray(labels[f], np.int16) for f in FACTORS}, rich, poor)


def split_rng(seed: int, dataset: str, split: str) -> np.random.Generator:
    """Independent, reproducible stream for one (dataset, split)."""
    key = [int.from_bytes(x.encode(), "little") % (2**63) for x in (dataset, split)]
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


# ---------------------------------------------------------------------------------------------
# Derived datasets


def spurious_labels(
    n: int, rng: np.random.Generator, agreement: float, classes: Sequence[str] = ("circle", "square")
) -> dict[str, np.ndarray]:
    """Labels for toy-spurious (the toy Waterbirds).

    The class (``classes[0]`` or ``classes[1]``, stored in ``shape``) agrees with the background
    (class 0 <-> dark, class 1 <-> light) in a fraction ``agreement`` of images, exactly: the
    number of disagreeing images is ``round(n * (1 - agreement))``.  Other factors are uniform.
    """
    lab = sample_labels(n, rng)
    y = rng.integers(0, 2, size=n)
    agree = np.ones(n, dtype=bool)
    agree[: int(round(n * (1 - agreement)))] = False
    rng.shuffle(agree)
    lab["shape"] = np.array([SHAPES.index(classes[k]) for k in y], dtype=np.int16)
    lab["background"] = np.where(agree, y, 1 - y).astype(np.int16)
    lab["spurious_class"] = y.astype(np.int16)
    return lab


def shift_labels(
    n_per_year: int,
    years: Sequence[int],
    rng: np.random.Generator,
    colour: str = "yellow",
    p_start: float = 0.05,
    p_end: float = 0.5,
) -> dict[str, np.ndarray]:
    """Labels for toy-shift (the toy Stanford Cars across model years).

    Over ``years`` the probability that an image's colour is ``colour`` rises linearly from
    ``p_start`` to ``p_end``; other colours share the rest uniformly.  A ``year`` label (index into
    ``years``) is added.
    """
    k = COLOURS.index(colour)
    others = [i for i in range(len(COLOURS)) if i != k]
    out: dict[str, list[np.ndarray]] = {}
    for t, _ in enumerate(years):
        p = p_start + (p_end - p_start) * t / max(len(years) - 1, 1)
        lab = sample_labels(n_per_year, rng)
        is_k = rng.random(n_per_year) < p
        lab["colour"] = np.where(is_k, k, rng.choice(others, size=n_per_year)).astype(np.int16)
        lab["year"] = np.full(n_per_year, t, dtype=np.int16)
        for key, val in lab.items():
            out.setdefault(key, []).append(val)
    return {key: np.concatenate(v) for key, v in out.items()}


def rb_swap(images: np.ndarray) -> np.ndarray:
    """Swap the red and blue channels of uint8 images [..., 3]."""
    return np.ascontiguousarray(images[..., ::-1])


def suppress_blue(images: np.ndarray, factor: float = 0.0) -> np.ndarray:
    """Multiply the blue channel by ``factor`` (0 removes it)."""
    out = images.copy()
    out[..., 2] = np.clip(np.rint(out[..., 2].astype(np.float32) * factor), 0, 255).astype(np.uint8)
    return out


def grayscale(images: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma Y = 0.299 R + 0.587 G + 0.114 B, replicated to three channels (uint8)."""
    y = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    y = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return np.repeat(y[..., None], 3, axis=-1)


def colour_ops(images: np.ndarray, blue_factor: float = 0.0) -> dict[str, np.ndarray]:
    """The transformed copies study 000's operators are fitted on."""
    return {
        "images_rb_swap": rb_swap(images),
        "images_b_suppressed": suppress_blue(images, blue_factor),
        "images_gray": grayscale(images),
    }


#: toy datasets the generator writes; each maps to its factor list (beyond FACTORS).
TOY_DATASETS = ("toy", "toy-spurious", "toy-shift", "toy-colour-ops")


def split_sizes(dataset: str, cfg) -> dict[str, int]:
    """``{split: images}`` of toy ``dataset`` under the toy world's settings ``cfg`` (what
    :func:`generate` draws; known before anything is drawn, so a config can be checked)."""
    if dataset == "toy":
        return {k: int(v) for k, v in cfg.splits.to_dict().items()}
    if dataset == "toy-spurious":
        return {k: int(v) for k, v in cfg.spurious.splits.items()}
    if dataset == "toy-shift":
        return {"test": int(cfg.shift.n_per_year) * len(cfg.shift.years)}
    if dataset == "toy-colour-ops":
        return {k: int(v) for k, v in cfg.colour_ops.splits.items()}
    raise ValueError(f"unknown toy dataset {dataset!r}; known: {TOY_DATASETS}")


def generate(dataset: str, cfg, splits: Iterable[str] | None = None) -> dict[str, Split]:
    """Generate every split of toy ``dataset`` from the toy world's settings ``cfg``
    (:class:`~cliplens.core.settings.ToySettings`: ``seed``, ``image_size``, ``noise``,
    ``textured_background``, ``splits`` and the per-dataset sections ``spurious``, ``shift``,
    ``colour_ops``; see ``toy.schema.yaml``).
    """
    params = WorldParams(
        image_size=int(cfg.image_size),
        noise=float(cfg.noise),
        textured_background=bool(cfg.textured_background),
    )
    seed = int(cfg.seed)
    out: dict[str, Split] = {}
    for split, n in split_sizes(dataset, cfg).items():
        if splits is not None and split not in splits:
            continue
        rng = split_rng(seed, dataset, split)
        if dataset == "toy-spurious":
            sp = cfg.spurious
            agreement = sp.agreement_train if split == "train" else sp.agreement_test
            labels = spurious_labels(n, rng, agreement, tuple(sp.classes))
        elif dataset == "toy-shift":
            sh = cfg.shift
            labels = shift_labels(sh.n_per_year, list(sh.years), rng, sh.colour, sh.p_start,
                                  sh.p_end)
        else:
            labels = sample_labels(n, rng)
        part = draw_split(labels, rng, params)
        for key in labels:
            if key not in FACTORS:
                part.labels[key] = np.asarray(labels[key], np.int16)
        if dataset == "toy-colour-ops":
            part.extra_images = colour_ops(part.images, cfg.colour_ops.blue_factor)
        out[split] = part
    return out
