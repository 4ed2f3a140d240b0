"""How close a reconstruction is to its original: cosine similarity of a scorer model's image
embeddings of both (grayscale as the published study, or colour), per image, summarised with
means and 95 % t confidence intervals and paired SigLIP2 - SigLIP differences."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from ...core.stats import mean_ci

# ---------------------------------------------------------------------------------------------
# similarity


def square(image: Image.Image, size: int) -> Image.Image:
    """Squash-resize to ``size`` x ``size`` (bicubic), as SigLIP's preprocessing does."""
    image = image.convert("RGB")
    return image if image.size == (size, size) else image.resize((size, size), Image.BICUBIC)


def variant_image(image: Image.Image, variant: str, size: int) -> Image.Image:
    """The image a scorer sees: squashed to its input ``size``; ``grayscale``: then converted to
    luma (PIL's ITU-R 601 ``L``) and back to three equal channels, as the published metric does;
    ``colour``: unchanged."""
    img = square(image, size)
    if variant == "grayscale":
        return img.convert("L").convert("RGB")
    if variant == "colour":
        return img
    raise ValueError(f"unknown similarity variant {variant!r} (grayscale, colour)")


@torch.no_grad()
def embed_images(scorer, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
    """L2-normalised scorer embeddings [N, E] of PIL images (scorer's own preprocessing)."""
    out = []
    for a in range(0, len(images), batch_size):
        px = scorer.preprocess(list(images[a:a + batch_size]))
        out.append(scorer.encode_image(px.to(scorer.device), normalize=True).float().cpu())
    return torch.cat(out) if out else torch.empty(0, scorer.embed_dim)


def similarity_rows(
    scorer,
    originals: Sequence[Image.Image],
    reconstructions: Mapping[str, Sequence[Image.Image]],
    *,
    variants: Sequence[str] = ("grayscale", "colour"),
    index: Sequence[int] | None = None,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Per-image cosine similarities cos(e(o_i), e(r_i)) of scorer embeddings e (L2-normalised)
    of original o_i and reconstruction r_i, both squashed to the scorer's input size (and made
    grayscale for that variant).  ``reconstructions``: extractor spec -> images aligned with
    ``originals``.  Rows: scorer, variant, extractor, image (dataset index), cosine."""
    size = int(scorer.image_size)
    index = list(range(len(originals))) if index is None else list(index)
    rows = []
    for variant in variants:
        ref = embed_images(scorer, [variant_image(o, variant, size) for o in originals], batch_size)
        for spec, recs in reconstructions.items():
            if len(recs) != len(originals):
                raise ValueError(f"{spec}: {len(recs)} reconstructions for {len(originals)} images")
            emb = embed_images(scorer, [variant_image(r, variant, size) for r in recs], batch_size)
            cos = (ref * emb).sum(-1).numpy()
            rows += [{"scorer": scorer.spec, "variant": variant, "extractor": spec,
                      "image": int(i), "cosine": float(c)} for i, c in zip(index, cos)]
    return rows


def summarise_similarity(per_image, extractors: Mapping[str, Mapping[str, Any]]):
    """(summary, differences) DataFrames from per-image rows (:func:`similarity_rows`).

    ``extractors``: spec -> {"group", "resolution"}.  Summary: one row per (scorer, variant,
    extractor) with group, resolution, n, mean, sd, ci_low, ci_high (95 % t interval, column
    ``ci_method``).  Differences: for each (scorer, variant, resolution) where exactly one
    extractor of each of the first two groups (in ``extractors`` order) exists, the paired
    per-image difference second - first (e.g. SigLIP2 - SigLIP) with its 95 % t interval.
    """
    import pandas as pd

    df = pd.DataFrame(per_image)
    rows = []
    for (scorer, variant, spec), g in df.groupby(["scorer", "variant", "extractor"], sort=False):
        info = extractors[spec]
        rows.append({"scorer": scorer, "variant": variant, "extractor": spec,
                     "group": info["group"], "resolution": int(info["resolution"]),
                     **mean_ci(g["cosine"]), "ci_method": "t, 95%"})
    summary = pd.DataFrame(rows)
    groups = list(dict.fromkeys(v["group"] for v in extractors.values()))
    diffs = []
    if len(groups) >= 2:
        a, b = groups[0], groups[1]
        for (scorer, variant), g in df.groupby(["scorer", "variant"], sort=False):
            by_res: dict[int, dict[str, str]] = {}
            for spec, info in extractors.items():
                by_res.setdefault(int(info["resolution"]), {}).setdefault(info["group"], [])
                by_res[int(info["resolution"])][info["group"]].append(spec)
            for res, members in sorted(by_res.items()):
                if len(members.get(a, [])) != 1 or len(members.get(b, [])) != 1:
                    continue
                xa = g[g.extractor == members[a][0]].set_index("image")["cosine"]
                xb = g[g.extractor == members[b][0]].set_index("image")["cosine"]
                common = xa.index.intersection(xb.index)
                d = (xb[common] - xa[common]).to_numpy()
                diffs.append({"scorer": scorer, "variant": variant, "resolution": res,
                              "first": members[a][0], "second": members[b][0],
                              "comparison": f"{b} - {a}", **mean_ci(d),
                              "second_better_share": float(np.mean(d > 0)) if len(d) else np.nan,
                              "ci_method": "paired t, 95%"})
    return summary, pd.DataFrame(diffs)
