"""The workflow itself: plans offline, and the tiny config runs end to end."""

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def snakemake(workdir, *args, timeout=900, umask=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           *args]
    pre = None if umask is None else (lambda: os.umask(umask))
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                          preexec_fn=pre)


def job_stats(text):
    """{rule: count} from the 'Job stats' table snakemake prints (empty when nothing to do)."""
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal", text, re.S)
    if not m:
        return {}
    return {line.split()[0]: int(line.split()[1]) for line in m.group(1).strip().splitlines()}


def test_default_config_plans(tmp_path):
    out = snakemake(tmp_path, "-n", "--cores", "2")
    assert out.returncode == 0, out.stderr + out.stdout
    text = out.stdout + out.stderr
    for rule in ("toy_world", "train_toy_model", "zeroshot_table"):
        assert rule in text


def test_paper_config_plans_offline_in_seconds(tmp_path):
    t0 = time.perf_counter()
    out = snakemake(tmp_path, "-n", "--cores", "8", "--configfile", str(ROOT / "configs/paper.yaml"))
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr + out.stdout
    text = out.stdout + out.stderr
    assert "imagenet" in text and "ViT-B-16" in text
    # study 000 as published: one reconstructor per extractor (4 SigLIP + 4 SigLIP2), trained
    # on COCO train2017 with online tokens (no token cache of train2017), two scorers
    stats = job_stats(text)
    assert stats["inversion_train"] == 8 and stats["inversion_score"] == 2, stats
    assert "siglip2-base-patch16-512" in text and "train2017" in text
    assert "coco2017/train/tokens/images.layer-2.all" not in text
    # study 001 as published: three LAION ViTs, each decomposed on ImageNet val and on the
    # Waterbirds train and test splits; ImageNet-segmentation; no toy factor check
    assert stats["heads_textspan"] == 3 and stats["heads_decompose_gather"] == 9, stats
    assert stats["heads_spurious"] == 3 and "heads_factors" not in stats, stats
    assert "gtsegs_ijcv.mat" in text or "imagenet-seg" in text
    # study 003 as published: RN50x16 pairs and ViT-B-32 neurons over 1000 ImageNet val images
    assert stats["neurons_store_gather"] == 6 and stats["neurons_sparse"] == 2, stats  # fit, task, cars
    assert stats["neurons_effects"] == 2, stats
    assert "neurons/open_clip--RN50x16@openai/imagenet/val/1000/store.h5" in text
    assert "neurons/open_clip--RN50x16@openai/imagenet/val/5000/store.h5" in text
    # ... with PASCAL Context-59 segmentation for the ResNet only, and Stanford Cars years
    assert stats["neurons_segmentation"] == 1 and stats["neurons_shift"] == 2, stats
    assert "neurons/open_clip--RN50x16@openai/stanford-cars/train/all/store.h5" in text
    assert "neurons_evidence" not in stats, stats  # the toy world's factors only
    # study 002: 4 SAEs on each of CIFAR-10 and Food-101 (train), scored on their test splits
    assert stats["sae_train"] == 8 and stats["sae_evaluate"] == 8, stats
    assert stats["sae_interpret"] == 8 and stats["sae_report"] == 1, stats
    # study 004: LaCLIP's CLIP and LaCLIP (hand-placed, each checked once) on the eight
    # published downstream tasks; LaCLIP's projections fine-tuned on CC3M, 5 Cs x 3 seeds
    assert stats["purity_weights"] == 2 and stats["purity_eval"] == 16, stats
    assert stats["check_laclip_checkpoint"] == 2 and stats["purity_finetune"] == 15, stats
    assert "models/laclip/cc3m_laclip.ready" in text and "datasets/cc3m/.ready" in text
    assert "cache/hf--openai--clip-vit-base-patch32/food101/train/embeddings.h5" in text
    assert elapsed < 60, elapsed


def test_bad_config_fails_before_any_job_naming_the_key(tmp_path):
    out = snakemake(tmp_path, "-n", "--cores", "1", "--config", "device=gpu")
    assert out.returncode != 0
    assert "device" in out.stderr + out.stdout and "does not match" in out.stderr + out.stdout


# study 001 jobs that follow TextSpan's output
HEADS_JOBS = {"heads_textspan": 1, "heads_replacement": 1, "heads_factors": 1,
              "heads_segmentation": 1, "heads_neighbours": 1}


PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    return Path(path).read_bytes()[:8] == PNG


@pytest.mark.workflow
def test_tiny_config_runs_end_to_end(tmp_path):
    import json

    import h5py
    import numpy as np

    from cliplens.studies.heads.store import read_decomposition

    out = snakemake(tmp_path, "--cores", "2", "--configfile", str(ROOT / "configs/test.yaml"),
                    umask=0o022)
    assert out.returncode == 0, out.stderr[-6000:]
    res = tmp_path / "results"

    # Outputs follow the umask (0644 files, 0755 folders), written atomically through temp files.
    for path in res.rglob("*"):
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))
    # No job warns about something the workflow could have prevented.
    for log in (res / "logs").rglob("*.log"):
        warned = [ln for ln in log.read_text().splitlines() if "warn" in ln.lower()]
        assert not warned, (log, warned)

    # Zero-shot: the table (the data of its heatmap) holds every (model, task) result.
    rows = list(csv.DictReader((res / "tables/zeroshot/accuracy.csv").open()))
    pairs = {(r["model"], r["task"]) for r in rows}
    assert pairs == {(m, t) for m in ("toy:clip-vit", "toy:siglip2-32")
                     for t in ("toy-colour", "toy-shape")}
    for r in rows:
        assert 0.0 <= float(r["top1"]) <= 1.0
        slug = r["model"].replace(":", "--")
        result = json.loads((res / f"zeroshot/{slug}/{r['task']}.json").read_text())
        assert float(r["top1"]) == pytest.approx(result["top1"], abs=1e-6)
    assert is_png(res / "figures/zeroshot/accuracy.png")
    assert (res / "cache/toy--clip-vit/toy/test/embeddings.h5").exists()

    # Study 000: both extractors reconstructed, scored by the scorer in both variants.
    sim = list(csv.DictReader((res / "tables/inversion/similarity.csv").open()))
    assert {(r["extractor"], r["variant"]) for r in sim} == {
        (e, v) for e in ("toy:siglip-32", "toy:siglip2-32") for v in ("grayscale", "colour")}
    for r in sim:
        assert r["scorer"] == "toy:clip-vit" and int(r["n"]) == 40
        assert float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"])
        assert -1.0 <= float(r["mean"]) <= 1.0
    diff = list(csv.DictReader((res / "tables/inversion/v1_vs_v2.csv").open()))
    assert {(r["first"], r["second"], r["resolution"]) for r in diff} == {
        ("toy:siglip-32", "toy:siglip2-32", "32")}
    ops = list(csv.DictReader((res / "tables/inversion/operators.csv").open()))
    kinds = {(r["task"], r["kind"]) for r in ops}
    assert {("rb_swap", "procrustes"), ("rb_swap", "symmetric"), ("rb_swap", "linear"),
            ("b_suppression", "linear"), ("colorization", "linear")} <= kinds
    for r in ops:
        if r["kind"] == "true":  # the truly transformed features explain themselves
            assert float(r["r2"]) == pytest.approx(1.0)
    # reconstructions.png draws the first 4 held-out images and each extractor's reconstruction
    with np.load(res / "figures/inversion/reconstructions.npz") as z:
        drawn = {k: z[k] for k in z.files}
    assert drawn["original"].shape == (4, 32, 32, 3) and drawn["original"].dtype == np.uint8
    for spec in ("toy:siglip-32", "toy:siglip2-32"):
        with h5py.File(res / f"inversion/{spec.replace(':', '--')}/heldout.h5") as h5:
            np.testing.assert_array_equal(drawn[f"recon/{spec}"], h5["recon"][:4])
    # the operator figures draw the arrays of operators.npz: examples of every kind, eigenvalues
    with np.load(res / "inversion/toy--siglip2-32/operators.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for task in ("rb_swap", "b_suppression", "colorization"):
        assert arrays[f"{task}/source"].shape == arrays[f"{task}/target"].shape
        for kind in ("none", "true", "linear"):
            assert arrays[f"{task}/recon/{kind}"].shape == arrays[f"{task}/source"].shape
    lam = arrays["rb_swap/procrustes/eig"]
    np.testing.assert_allclose(np.abs(lam), 1.0, atol=1e-6)  # an orthogonal map's spectrum
    for fig in ("v1_vs_v2", "inversion/reconstructions", "inversion/rb_swap",
                "inversion/b_suppression", "inversion/colorization"):
        assert is_png(res / f"figures/{fig}.png"), fig
    samples = list((res / "inversion/toy--siglip2-32/checkpoints").rglob("*.png"))
    assert samples, "no sample grids were written during training"

    # Study 001 on the tiny clip-vit (1 layer x 2 heads): the decomposition cache adds up to
    # the model's embeddings; every head is explained, probed and scored; tables and figures.
    dec = read_decomposition(res / "cache/toy--clip-vit/toy/test/decomposition.h5",
                             {"model": "toy:clip-vit"})
    total = (dec["embed"] + dec["heads"].sum((1, 2)) + dec["attn_bias"].sum(1)
             + dec["mlps"].sum(1) + dec["rest"] + dec["bias"])
    np.testing.assert_allclose(total, dec["embeddings"], atol=1e-4)
    ts = json.loads((res / "heads/toy--clip-vit/textspan.json").read_text())
    assert [(h["layer"], h["head"]) for h in ts["heads"]] == [(0, 0), (0, 1)]
    assert all(len(h["texts"]) == 3 for h in ts["heads"])
    assert "L0.H1" in (res / "heads/toy--clip-vit/textspan.txt").read_text()
    factors = list(csv.DictReader((res / "tables/heads/toy--clip-vit/factors.csv").open()))
    assert len(factors) == 2 and all(r["probe_factor"] for r in factors)
    for r in factors:  # the box the figure draws is the factor with the largest R^2
        r2 = {k[3:]: float(v) for k, v in r.items() if k.startswith("r2_")}
        assert r["probe_factor"] == max(r2, key=r2.get)
    rep = list(csv.DictReader((res / "tables/heads/toy--clip-vit/replacement.csv").open()))
    assert {(r["task"], r["n_texts"]) for r in rep} == {
        (t, n) for t in ("toy-colour", "toy-shape", "toy-position", "toy-size")
        for n in ("-1", "0", "1", "3")}
    abl = list(csv.DictReader((res / "tables/heads/toy--clip-vit/ablation.csv").open()))
    assert {r["ablated"] for r in abl} == {"attention", "mlp", "cls_to_cls"}
    orig = {r["task"]: float(r["accuracy"]) for r in rep if r["n_texts"] == "-1"}
    for r in abl:  # no layer ablated is the unchanged model of the replacement table
        if r["layers_ablated"] == "0":
            assert float(r["accuracy"]) == pytest.approx(orig[r["task"]], abs=1e-9)
    seg = list(csv.DictReader((res / "tables/heads/toy--clip-vit/segmentation.csv").open()))
    assert len(seg) == 2 and all(0 <= float(r["miou"]) <= 1 and r["n"] == "40" for r in seg)
    with np.load(res / "figures/heads/toy--clip-vit/spatial_maps.npz") as z:
        maps = {k: z[k] for k in z.files}
    assert maps["image"].shape == (2, 32, 32, 3) and maps["mask"].shape == (2, 32, 32)
    assert maps["class_map"].shape == (2, 32, 32) and len(maps["predicted"]) == 2
    assert len(maps["columns"]) == 2 and maps["head_map_0"].shape == (2, 32, 32)
    nb = list(csv.DictReader((res / "tables/heads/toy--clip-vit/neighbours.csv").open()))
    assert len(nb) == 2 * 2 * 3  # 2 heads x 2 queries x 3 neighbours
    for r in nb:
        assert r["neighbour"] != r["query"] and -1 <= float(r["cosine"]) <= 1
    spur = list(csv.DictReader((res / "tables/heads/toy--clip-vit/spurious.csv").open()))
    assert {r["condition"] for r in spur} == {"before", "after"} and len(spur) == 8
    for fig in ("ablation", "factors", "spatial_maps", "neighbours", "spurious"):
        assert is_png(res / f"figures/heads/toy--clip-vit/{fig}.png"), fig
    # Study 003: the pair store rebuilds the clip-rn embeddings' pair terms; both ViT variants;
    # components of every unit; the table ranks units by their mean top-k norm.
    from cliplens.core.caches.rows import RowCache

    with RowCache(res / "neurons/toy--clip-rn/toy/val/60/store.h5", "neurons") as cache:
        assert cache.provenance["units"] == "pairs" and len(cache) == 60
        assert cache.provenance["of_n"] == 100 and cache.provenance["subset"] == "spread"
    with RowCache(res / "neurons/toy--clip-vit-2/toy/val/60/store.h5", "neurons") as cache:
        assert {"exact", "published"} <= set(cache.names) and cache.provenance["layer"] == 0
    for m, variants in (("toy--clip-rn", {"pairs"}), ("toy--clip-vit-2", {"exact", "published"})):
        with h5py.File(res / f"neurons/{m}/components.h5") as h5:
            assert set(h5) == variants
            for v in variants:
                assert h5[v]["top_images"].shape[1] == 10
                np.testing.assert_allclose(np.linalg.norm(h5[v]["pc0"][()], axis=1)[
                    np.linalg.norm(h5[v]["pc0"][()], axis=1) > 0], 1.0, rtol=1e-5)
        top = list(csv.DictReader((res / f"tables/neurons/{m}/top_units.csv").open()))
        assert {r["variant"] for r in top} == variants and len(top) == 5 * len(variants)
        for v in variants:
            norms = [float(r["mean_top_norm"]) for r in top if r["variant"] == v]
            assert norms == sorted(norms, reverse=True)
            assert all(1 <= len(r["texts"].split("; ")) <= 3 for r in top if r["variant"] == v)
        eff = list(csv.DictReader((res / f"tables/neurons/{m}/effects.csv").open()))
        acc = {(r["what"], r["n_texts"] or r["percentile"]): float(r["accuracy"]) for r in eff}
        assert acc[("ablated", "0.0")] == pytest.approx(acc[("original", "")])
        if m == "toy--clip-rn":  # pairs are rank one: their first component is exact
            assert acc[("component", "")] == pytest.approx(acc[("original", "")])
        assert is_png(res / f"figures/neurons/{m}/effects.png")
        # part 2: top images per chosen neuron, concept tracking, the toy evidence
        ret = list(csv.DictReader((res / f"tables/neurons/{m}/retrieval.csv").open()))
        assert len({r["neuron"] for r in ret}) == 2 and all(is_png(res / f"figures/neurons/{m}/"
                                                                   f"retrieval/{i}.png") for i in (1, 2))
        assert len(ret) == 2 * 4 * (3 if m == "toy--clip-rn" else 2)  # rows x 4 images
        shift = list(csv.DictReader((res / f"tables/neurons/{m}/shift.csv").open()))
        assert len(shift) == 10 and sum(int(r["images"]) for r in shift) == 100
        assert float(shift[0]["true_share"]) < float(shift[-1]["true_share"])
        ev = json.loads((res / f"tables/neurons/{m}/evidence.json").read_text())
        assert ev["units"] == len(list(csv.DictReader((res / f"tables/neurons/{m}/evidence.csv")
                                                      .open())))
        assert 0 <= ev["all"]["chance"] <= 1
    seg = list(csv.DictReader((res / "tables/neurons/toy--clip-rn/segmentation.csv").open()))
    assert [r["method"] for r in seg] == ["matched pairs", "all pairs", "centre prior"]
    assert not (res / "tables/neurons/toy--clip-vit-2/segmentation.csv").exists()

    # Study 002: the SAE scored on toy-colour, CLIP and CLIP+SAE side by side
    sae = list(csv.DictReader((res / "tables/sae/toy--clip-vit/metrics.csv").open()))
    assert [(r["sae"], r["task"]) for r in sae] == [("topk-4", "toy-colour")]
    assert float(sae[0]["l0"]) <= 4 and 0 <= float(sae[0]["accuracy_sae"]) <= 1
    assert is_png(res / "figures/sae/toy--clip-vit/metrics.png")
    feats = json.loads((res / "tables/sae/toy--clip-vit/toy/topk-4/features.json").read_text())
    assert feats["images"] == 200 and feats["live"] + feats["dead"] <= 128
    assert is_png(res / "figures/sae/toy--clip-vit/toy/topk-4/collages.png")
    # ... its 4 most frequent features described offline in both languages, on one page
    desc = list(csv.DictReader((res / "tables/sae/toy--clip-vit/toy/topk-4/interpretations.csv")
                               .open()))
    assert len(desc) == 8 and {r["language"] for r in desc} == {"en", "ru"}
    assert all(r["baseline"] == "True" and r["text"] for r in desc)
    page = (res / "reports/sae/index.html").read_text()
    assert page.count('class="collage"') == 4 and "offline baseline" in page
    assert len(list((res / "reports/sae/toy--clip-vit/toy/topk-4/collages").glob("*.png"))) == 4

    # Study 004: both models' purity and the pruning sweep on toy-colour
    comp = list(csv.DictReader((res / "tables/purity/compare.csv").open()))
    assert [r["model"] for r in comp] == ["toy:clip-vit-2", "toy:clip-vit",
                                          "toy:clip-vit - toy:clip-vit-2"]
    assert all(0 <= float(r["image_mean_abs"]) <= 1 for r in comp[:2])
    prune = list(csv.DictReader((res / "tables/purity/pruning.csv").open()))
    assert len(prune) == 2 * (1 + 2 * 3 * (2 + 2))  # 2 models: all; image/text x k x 4 runs
    assert is_png(res / "figures/purity/pruning.png") and is_png(res / "figures/purity/compare.png")
    mis = list(csv.DictReader((res / "tables/purity/misalign.csv").open()))
    assert [float(r["fraction"]) for r in mis] == [0.0, 0.5]
    assert is_png(res / "figures/purity/misalign.png")

    # nothing left to do on a second run
    again = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(ROOT / "configs/test.yaml"))
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr

    # The report holds the figure with a caption naming the config that produced it.
    report = tmp_path / "report.html"
    rep = snakemake(tmp_path, "--cores", "1", "--configfile", str(ROOT / "configs/test.yaml"),
                    "--report", str(report))
    assert rep.returncode == 0, rep.stderr[-3000:]
    html = report.read_text()
    assert "accuracy.png" in html
    caption = re.sub(r"<[^>]+>", "", html)  # the caption's config values sit in <tt> tags
    assert "Produced with models ['toy:clip-vit', 'toy:siglip2-32']" in caption
    for fig in ("v1_vs_v2.png", "reconstructions.png", "rb_swap.png", "colorization.png",
                "ablation.png", "factors.png", "spatial_maps.png", "neighbours.png",
                "spurious.png", "effects.png", "segmentation.png", "shift.png", "evidence.png",
                "retrieval", "metrics.png", "collages.png", "compare.png", "pruning.png",
                "misalign.png"):
        assert fig in html, fig
    assert "Produced with extractors ['toy:siglip-32', 'toy:siglip2-32']" in caption
    assert "last 1 layer projected" in caption  # the toy clip-vit has 1 block

    # Editing one value reruns exactly the jobs that depend on it (Snakemake's own dry run).
    edits = {
        "width": ({"toy_models": {"clip-vit": {"vision": {"width": 48}}}},
                  {"train_toy_model": 1, "cache_shard": 2, "cache_gather": 1, "zeroshot_eval": 2,
                   "sae_train": 1, "sae_evaluate": 1, "sae_features": 1, "sae_table": 1,
                   "sae_interpret": 1, "sae_report": 1, "purity_weights": 1, "purity_eval": 1,
                   "purity_table": 1, "purity_features": 1, "purity_finetune": 2,
                   "purity_misalign_table": 1, "zeroshot_table": 1, "zeroshot_figure": 1,
                   "inversion_score": 1, "inversion_similarity_table": 1, "inversion_v1_vs_v2_figure": 1,
                   **HEADS_JOBS, "heads_decompose_shard": 4, "heads_decompose_gather": 4,
                   "heads_texts": 1, "heads_ablation": 1, "heads_spurious": 1, "all": 1}),
        "templates": ({"zeroshot": {"templates": {"toy-colour": ["a {} blob"]}}},
                      {"zeroshot_eval": 2, "zeroshot_table": 1, "zeroshot_figure": 1, "all": 1}),
        "dtype": ({"cache": {"dtype": "float16"}},
                  {"cache_shard": 6, "cache_gather": 3, "zeroshot_eval": 4, "zeroshot_table": 1,
                   "zeroshot_figure": 1, "sae_train": 1, "sae_evaluate": 1, "sae_features": 1,
                   "sae_table": 1, "sae_interpret": 1, "sae_report": 1, "purity_eval": 2,
                   "purity_table": 1, "all": 1}),
        # one SAE's setting retrains that SAE alone
        "sae k": ({"sae": {"saes": {"topk-4": {"k": 3}}}},
                  {"sae_train": 1, "sae_evaluate": 1, "sae_features": 1, "sae_table": 1,
                   "sae_interpret": 1, "sae_report": 1, "all": 1}),
        # the pruning sweep's k: the sweeps and the tables, not the weights' purity
        "purity keep": ({"purity": {"pruning": {"keep": [8, 16]}}},
                        {"purity_eval": 2, "purity_table": 1, "all": 1}),
        # how descriptions are cleaned redoes the descriptions and the page, nothing else
        "interpret": ({"sae": {"interpret": {"max_chars": 50}}},
                      {"sae_interpret": 1, "sae_report": 1, "all": 1}),
        # toy-shift feeds study 003's concept tracking only
        "shift dataset": ({"toy": {"shift": {"n_per_year": 31}}},
                          {"toy_world": 1, "neurons_store_shard": 2, "neurons_store_gather": 2,
                           "neurons_shift": 2, "all": 1}),
        # TextSpan's number of texts: no decomposition, text embedding, ablation or spurious job
        "textspan texts": ({"heads": {"textspan": {"n_texts": 2, "replace_n_texts": [1, 2]}}},
                           {**HEADS_JOBS, "all": 1}),
        # the number of texts per component re-decomposes, nothing else
        "sparse k": ({"neurons": {"sparse": {"k": 4, "normalise": "columns"}}},
                     {"neurons_sparse": 2, "neurons_effects": 2, "neurons_retrieval": 2,
                      "neurons_shift": 2, "neurons_evidence": 2, "all": 1}),
        # settings that cannot change a result rerun nothing
        "hf_home": ({"hf_home": str(tmp_path / "elsewhere")}, {}),
        "device": ({"device": "cpu"}, {}),
        "threads": ({"inversion": {"train": {"threads": 1}}}, {}),
        # a reconstructor setting retrains both reconstructors but re-extracts no tokens
        "inversion steps": ({"inversion": {"train": {"steps": 21}}},
                            {"inversion_train": 2, "inversion_reconstruct": 2, "inversion_score": 1,
                             "inversion_similarity_table": 1, "inversion_v1_vs_v2_figure": 1,
                             "inversion_reconstructions_figure": 1, "inversion_operators": 1,
                             "inversion_operator_figures": 1, "all": 1}),
    }
    for name, (edit, want) in edits.items():
        override = tmp_path / f"edit-{name.replace(' ', '_')}.yaml"
        override.write_text(yaml.safe_dump(edit))
        dry = snakemake(tmp_path, "-n", "--cores", "2", "--configfile",
                        str(ROOT / "configs/test.yaml"), str(override))
        text = dry.stdout + dry.stderr
        assert dry.returncode == 0, text
        assert job_stats(text) == want, (name, job_stats(text))
        if name == "width":  # the retrained model is clip-vit, not siglip2-32
            assert "toy_model=clip-vit" in text and "toy_model=siglip2-32" not in text
        if name == "templates":
            assert "task=toy-colour" in text and "task=toy-shape" not in text


@pytest.mark.workflow
def test_a_hand_placed_checkpoint_is_checked_and_a_missing_one_says_where_to_put_it(tmp_path):
    from tests.core.models.test_laclip import _RefLaCLIP, _save

    target = "resources/models/laclip/tiny_laclip.ready"
    out = snakemake(tmp_path, target, "--cores", "1", timeout=300)
    assert out.returncode != 0
    log = (tmp_path / "results/logs/check_laclip_checkpoint/tiny_laclip.log").read_text()
    placed = tmp_path / "resources/models/laclip/tiny_laclip.pt"
    assert f"place it at {placed.relative_to(tmp_path)}" in log and "LijieFan/LaCLIP" in log
    assert not (tmp_path / target).exists()
    _save(_RefLaCLIP(qk_norm=True).eval(), tmp_path / "resources")
    out = snakemake(tmp_path, target, "--cores", "1", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    marker = json.loads((tmp_path / target).read_text())
    assert marker["weights_sha256"] == hashlib.sha256(placed.read_bytes()).hexdigest()
    # another file put in its place reruns the check (and what used the model)
    time.sleep(1)
    _save(_RefLaCLIP(qk_norm=False).eval(), tmp_path / "resources")
    again = snakemake(tmp_path, target, "-n", "--cores", "1", timeout=300)
    assert again.returncode == 0 and "check_laclip_checkpoint" in again.stdout + again.stderr
