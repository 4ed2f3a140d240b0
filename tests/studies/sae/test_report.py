"""The study 002 report opened from disk in headless Chromium (Debian's ``chromium``, installed
with apt-get as root when missing; skipped with the reason otherwise): no console errors, the
script ran, and the collages show (the screenshot is not blank)."""

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cliplens.studies.sae.interpret_jobs import run_sae_report
from tests.debian import Unavailable, ensure_debian, which


@pytest.fixture(scope="module")
def chromium():
    try:
        ensure_debian(["chromium"], ["chromium"], "Chromium")
    except Unavailable as e:
        pytest.skip(str(e))
    return which("chromium")


def open_in_chromium(chromium, page, tmp_path):
    """(console lines, the DOM after the scripts ran, the screenshot [H, W, 3])."""
    shot = tmp_path / "shot.png"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--allow-file-access-from-files", "--enable-logging=stderr", "--v=0",
             "--window-size=1200,900", f"--user-data-dir={tmp_path / 'profile'}"]
    run = subprocess.run(flags + [f"--screenshot={shot}", page.as_uri()], capture_output=True,
                         text=True, timeout=120)
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)
    console = [line for line in (run.stderr + dom.stderr).splitlines() if ":CONSOLE" in line]
    return console, dom.stdout, np.asarray(Image.open(shot).convert("RGB"))


def test_a_page_with_a_script_error_is_caught(chromium, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<html><body><p>x</p><script>undefinedFunction();</script></body></html>")
    console, _, _ = open_in_chromium(chromium, page, tmp_path)
    assert any("undefinedFunction" in line for line in console)


def test_the_report_loads_without_errors_and_shows_the_collages(chromium, tmp_path):
    rng = np.random.default_rng(0)
    collages = tmp_path / "results" / "reports" / "sae" / "m" / "toy" / "s" / "collages"
    collages.mkdir(parents=True)
    colours = {3: (220, 30, 30), 8: (40, 60, 230)}
    for j, rgb in colours.items():
        im = np.zeros((192, 192, 3), np.uint8) + np.array(rgb, np.uint8)
        im[::64] = 0
        Image.fromarray(im).save(collages / f"{j}.png")
    rows = []
    for j, (en, ru) in {3: ("a red object", "красный объект"),
                        8: ("a blue <b>circle</b>", "синий круг")}.items():
        for lang, text in (("en", en), ("ru", ru)):
            rows.append({"feature": j, "language": lang, "interpreter": "baseline:nearest-text",
                         "model": "toy:clip-vit", "firing_rate": 0.1 * j, "raw": text,
                         "text": text, "flags": "", "purity": 0.9, "purity_of": "colour=red",
                         "names_value": lang == "en" and j == 3, "duplicate_of": None,
                         "detection_auc": rng.uniform(0.5, 1), "baseline": True})
    tables = tmp_path / "tables"
    tables.mkdir()
    pd.DataFrame(rows).to_csv(tables / "i.csv", index=False)
    (tables / "i.json").write_text(json.dumps({
        "interpreter": "baseline:nearest-text", "baseline": True, "languages": ["en", "ru"],
        "stats": {lang: {"auc_median": 0.8, "names_value": 0.5, "duplicates": 0, "empty": 0,
                         "too_long": 0, "language": 0} for lang in ("en", "ru")}}))
    pd.DataFrame([{"sae": "s", "dataset": "toy", "task": "toy-colour", "kind": "topk",
                   "accuracy_clip": 0.9, "accuracy_sae": 0.85, "dict_size": 128, "l0": 8,
                   "mse": 0.01, "l1": 1.5, "r2": 0.93, "dead": 0.1, "dense": 0.0, "n": 60}]
                 ).to_csv(tables / "m.csv", index=False)
    page = tmp_path / "results" / "reports" / "sae" / "index.html"
    run_sae_report(metrics_csv=[str(tables / "m.csv")], out_html=str(page),
                   saes=[{"name": "s", "model": "toy:clip-vit", "dataset": "toy",
                          "interpretations": str(tables / "i.csv"),
                          "summary": str(tables / "i.json"), "collages": str(collages)}])
    console, dom, shot = open_in_chromium(chromium, page, tmp_path)
    assert console == []
    assert 'data-ready="yes"' in dom  # the page's script ran to its end
    assert '<span class="count">2</span>' in dom  # and counted the rows it shows
    assert "a blue &lt;b&gt;circle&lt;/b&gt;" in dom and "синий круг" in dom  # escaped text
    assert shot.std() > 10  # not blank
    for rgb in colours.values():  # both collages are drawn: their colours fill >= 1 % of it
        share = (np.abs(shot.astype(int) - rgb).sum(-1) < 30).mean()
        assert share > 0.01, rgb
