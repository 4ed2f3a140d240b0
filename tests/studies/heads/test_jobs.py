"""Study 001's jobs (cliplens.studies.heads.jobs) on the tiny toy world (toy:clip-vit, 1 layer x
2 heads), each checked against the library computation it stands for."""

import json

import numpy as np
import pandas as pd
import pytest

from cliplens.core.data.tasks import get_task
from cliplens.core.io import ProvenanceError
from cliplens.core.jobs import run_gather, run_texts
from cliplens.core.models.registry import load_model
from cliplens.core.text.zeroshot import argmax_accuracy, task_classifier
from cliplens.studies.heads import jobs
from cliplens.studies.heads.analysis import nearest_neighbours
from cliplens.core.text.textsets import read_texts
from cliplens.studies.heads.store import load_heads, read_decomposition

SPEC = "toy:clip-vit"


@pytest.fixture(scope="module")
def study(tiny_world, tmp_path_factory):
    """Decomposition caches of toy val/test and toy-spurious train/test, the text set and
    TextSpan."""
    out = tmp_path_factory.mktemp("heads")
    S = tiny_world.S
    caches = {}
    for dataset, split in (("toy", "val"), ("toy", "test"), ("toy-spurious", "train"),
                           ("toy-spurious", "test")):
        shards = []
        for i in range(2):
            shards.append(str(out / f"{dataset}.{split}.{i}.h5"))
            jobs.run_decompose_shard(spec=SPEC, load=tiny_world.load, dataset=dataset,
                                     split=split, shard=i, n_shards=2, layers=None,
                                     batch_size=16, dtype="float32", roots=tiny_world.roots,
                                     out=shards[-1])
        caches[(dataset, split)] = str(out / f"{dataset}.{split}.h5")
        run_gather(shards=shards, out=caches[(dataset, split)])
    n = run_texts(spec=SPEC, load=tiny_world.load, sources=["builtin:toy-words"],
                       n_words=10, out=str(out / "texts.npz"))
    cfg = S.heads.textspan.replace(n_texts=3, replace_n_texts=[1, 3]).to_dict()
    ts = jobs.run_textspan(spec=SPEC, cfg=cfg, fit=caches[("toy", "val")],
                           texts=str(out / "texts.npz"), out_json=str(out / "ts.json"),
                           out_txt=str(out / "ts.txt"), out_csv=str(out / "ts.csv"),
                           out_npz=str(out / "ts.npz"))
    return out, caches, n, cfg, ts


def test_decomposition_shards_sum_to_the_embeddings(study):
    out, caches, *_ = study
    dec = read_decomposition(caches[("toy", "test")], {"model": SPEC})
    total = (dec["embed"] + dec["heads"].sum((1, 2)) + dec["attn_bias"].sum(1)
             + dec["mlps"].sum(1) + dec["rest"] + dec["bias"])
    np.testing.assert_allclose(total, dec["embeddings"], atol=1e-5)
    assert dec["provenance"]["layers"] == [0] and dec["provenance"]["heads"] == 2
    with pytest.raises(ProvenanceError):
        read_decomposition(caches[("toy", "test")], {"model": "toy:siglip-32"})


def test_texts_and_textspan(study):
    out, caches, n, cfg, ts = study
    texts, R, sources = read_texts(out / "texts.npz", SPEC)
    assert len(texts) == n == len(R) and set(sources) == {"builtin:toy-words"}
    np.testing.assert_allclose(np.linalg.norm(R, axis=1), 1.0, atol=1e-5)
    assert [(h["layer"], h["head"]) for h in ts["heads"]] == [(0, 0), (0, 1)]
    table = pd.read_csv(out / "ts.csv")
    assert len(table) == 2 * 3 and set(table["text"]) <= set(texts)
    with np.load(out / "ts.npz") as z:  # each head's basis is orthonormal
        for h in (0, 1):
            B = z[f"L0.H{h}.basis"]
            np.testing.assert_allclose(B @ B.T, np.eye(len(B)), atol=1e-8)
    assert "L0.H1" in (out / "ts.txt").read_text()
    assert json.loads((out / "ts.json").read_text())["config"]["n_texts"] == 3


def test_replacement_and_ablation_start_from_the_unchanged_model(tiny_world, study):
    out, caches, n, cfg, ts = study
    tasks = {"toy-colour": caches[("toy", "test")], "toy-shape": caches[("toy", "test")]}
    rep = jobs.run_replacement(spec=SPEC, load=tiny_world.load, cfg=cfg, roots=tiny_world.roots,
                               textspan=str(out / "ts.npz"), caches=tasks,
                               out=str(out / "rep.csv"))
    abl = jobs.run_ablation(spec=SPEC, load=tiny_world.load, roots=tiny_world.roots,
                            caches=tasks, out_csv=str(out / "abl.csv"),
                            out_png=str(out / "abl.png"))
    model = load_model(SPEC, **tiny_world.load)
    dec = read_decomposition(caches[("toy", "test")], {"model": SPEC})
    for task in tasks:
        W, ds, _ = task_classifier(model, task, tiny_world.roots)
        want = argmax_accuracy(dec["embeddings"].astype(np.float64), W, ds.labels)
        original = rep[(rep.task == task) & (rep.n_texts == -1)]["accuracy"].iloc[0]
        assert original == pytest.approx(want, abs=1 / len(ds))  # rounding may flip a near-tie
        start = abl[(abl.task == task) & (abl.layers_ablated == 0)]["accuracy"]
        assert (start == original).all()
    assert set(rep["n_texts"]) == {-1, 0, 1, 3} and set(abl["ablated"]) == {
        "attention", "mlp", "cls_to_cls"}


def test_factors_box_the_factor_with_the_largest_share(tiny_world, study):
    out, caches, *_ = study
    s = jobs.run_factors(spec=SPEC, top=2, roots=tiny_world.roots, fit=caches[("toy", "val")],
                         test=caches[("toy", "test")], textspan=str(out / "ts.json"),
                         out_csv=str(out / "f.csv"), out_json=str(out / "f.json"),
                         out_png=str(out / "f.png"))
    table = pd.read_csv(out / "f.csv")
    for r in table.to_dict("records"):
        r2 = {k[3:]: v for k, v in r.items() if k.startswith("r2_")}
        assert r["probe_factor"] == max(r2, key=r2.get)
    assert s["heads"] == 2 and s["chance_agreement"] == pytest.approx(1 / 5)


def test_segmentation_writes_the_maps_it_draws(tiny_world, study):
    out, *_ = study
    cfg = tiny_world.S.heads.segmentation.replace(images=20, show=2).to_dict()
    table = jobs.run_segmentation(spec=SPEC, load=tiny_world.load, cfg=cfg,
                                  roots=tiny_world.roots, texts=str(out / "texts.npz"),
                                  textspan=str(out / "ts.json"), out_csv=str(out / "seg.csv"),
                                  out_png=str(out / "seg.png"), out_maps=str(out / "seg.npz"))
    assert list(table["method"].str[:9]) == ["class map", "centre pr"]
    assert table["n"].tolist() == [20, 20] and ((0 <= table["miou"]) & (table["miou"] <= 1)).all()
    with np.load(out / "seg.npz") as z:
        assert z["image"].shape == (2, 32, 32, 3) and z["class_map"].shape == (2, 32, 32)
        assert z["mask"].dtype == bool and len(z["columns"]) == 2


def test_neighbours_are_the_nearest_by_the_heads_effect(tiny_world, study):
    out, caches, *_ = study
    cfg = tiny_world.S.heads.neighbours.replace(heads=[[0, 1]], queries=2, k=3).to_dict()
    table = jobs.run_neighbours(spec=SPEC, cfg=cfg, roots=tiny_world.roots,
                                fit=caches[("toy", "val")], textspan=str(out / "ts.json"),
                                out_png=str(out / "nb.png"), out_csv=str(out / "nb.csv"))
    assert len(table) == 2 * 3 and (table["head"] == 1).all()
    effects, dec = load_heads(caches[("toy", "val")], SPEC, [(0, 1)])
    rows = list(dec["index"])
    for q, g in table.groupby("query"):
        order = nearest_neighbours(effects[(0, 1)], [rows.index(q)], 3)[0]
        assert g["neighbour"].tolist() == [rows[j] for j in order]
        assert g["cosine"].is_monotonic_decreasing


def test_spurious_removal_reports_every_group(tiny_world, study):
    out, caches, *_ = study
    cfg = tiny_world.S.heads.spurious.replace(fit_images=None, n_heads=1).to_dict()
    s = jobs.run_spurious(spec=SPEC, load=tiny_world.load, task="toy-spurious", cfg=cfg,
                          roots=tiny_world.roots, fit=caches[("toy-spurious", "train")],
                          eval=caches[("toy-spurious", "test")], out_csv=str(out / "sp.csv"),
                          out_json=str(out / "sp.json"), out_png=str(out / "sp.png"))
    table = pd.read_csv(out / "sp.csv")
    assert len(table) == 8 and set(table["condition"]) == {"before", "after"}
    for cond in ("before", "after"):
        assert s[cond]["worst"] == table[table.condition == cond]["accuracy"].min()
    assert len(s["ablated_heads"]) == 1 and json.loads((out / "sp.json").read_text()) == s
    assert get_task("toy-spurious").dataset == "toy-spurious"
