"""Study 000's metric: per-image cosine similarities of scorer embeddings, summarised with t
confidence intervals and paired differences."""

import numpy as np
import pytest
from PIL import Image

from cliplens.core.stats import mean_ci
from cliplens.studies.inversion.similarity import similarity_rows, summarise_similarity


def test_mean_ci_is_the_t_interval():
    """The interval every summary row reports (``ci_method`` t, 95%)."""
    from scipy import stats

    x = np.random.default_rng(0).normal(0.7, 0.1, 40)
    got = mean_ci(x)
    lo, hi = stats.t.interval(0.95, 39, loc=x.mean(), scale=stats.sem(x))
    assert got["ci_low"] == pytest.approx(lo) and got["ci_high"] == pytest.approx(hi)
    assert np.isnan(mean_ci([0.5])["ci_low"])


def test_summary_and_paired_differences():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 0.8, 30)
    rows = []
    for spec, shift in (("toy:siglip-32", 0.0), ("toy:siglip2-32", 0.05), ("toy:siglip-64", 0.02)):
        rows += [{"scorer": "s", "variant": "colour", "extractor": spec, "image": i,
                  "cosine": b + shift} for i, b in enumerate(base)]
    info = {"toy:siglip-32": {"group": "SigLIP", "resolution": 32},
            "toy:siglip2-32": {"group": "SigLIP2", "resolution": 32},
            "toy:siglip-64": {"group": "SigLIP", "resolution": 64}}
    summary, diff = summarise_similarity(rows, info)
    assert len(summary) == 3 and set(summary.ci_method) == {"t, 95%"}
    assert len(diff) == 1  # no SigLIP2 at 64 px
    d = diff.iloc[0]
    assert d.resolution == 32 and d.comparison == "SigLIP2 - SigLIP"
    assert d["mean"] == pytest.approx(0.05) and d.second_better_share == 1.0


def test_similarity_of_an_image_with_itself_is_one():
    from tests.tiny_models import tiny_siglip

    scorer = tiny_siglip()
    imgs = [Image.fromarray(a) for a in
            np.random.default_rng(0).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)]
    rows = similarity_rows(scorer, imgs, {"same": imgs, "flipped": imgs[::-1]},
                           variants=("grayscale", "colour"))
    same = [r["cosine"] for r in rows if r["extractor"] == "same"]
    assert np.allclose(same, 1.0, atol=1e-5) and len(rows) == 12
    assert min(r["cosine"] for r in rows if r["extractor"] == "flipped") < 0.9999
