"""Study 004's jobs on the tiny toy world: projections read from the model, pruned accuracy
from the cache, the comparison table."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cliplens.core.models.registry import load_model
from cliplens.studies.purity.jobs import (projection_rows, run_purity_eval, run_purity_table,
                                          run_purity_weights)
from cliplens.studies.purity.metrics import keep_mask, neuron_scores, purity_metrics


@pytest.fixture(scope="module")
def purity_run(tiny_world, tmp_path_factory):
    from cliplens.core.jobs import run_cache_shard

    out = tmp_path_factory.mktemp("purity")
    run_cache_shard(spec="toy:clip-vit", load=tiny_world.load, dataset="toy", split="test",
                    shard=0, n_shards=1, batch_size=64, dtype="float32", normalize=False,
                    roots=tiny_world.roots, out=str(out / "test.h5"))
    weights = run_purity_weights(spec="toy:clip-vit", load=tiny_world.load,
                                 include_diagonal=False, out_json=str(out / "w.json"),
                                 out_npz=str(out / "w.npz"))
    return out, weights


def test_the_projections_are_the_models_weights_row_per_embedding_dimension(tiny_world,
                                                                           purity_run):
    out, weights = purity_run
    model = load_model("toy:clip-vit", **tiny_world.load)
    rows = projection_rows(model)
    x = torch.randn(3, rows["image"].shape[1], dtype=torch.float64)
    # the image projection applied as the model applies it: y = x W, so y_i = <row i, x>
    w = model.model.visual.proj.detach().double()
    np.testing.assert_allclose((x @ w).numpy(), x.numpy() @ rows["image"].T, atol=1e-10)
    assert rows["text"].shape[0] == rows["image"].shape[0] == 64
    assert weights["image"] == pytest.approx(purity_metrics(rows["image"]))
    scores = np.load(out / "w.npz")
    np.testing.assert_allclose(scores["text"], neuron_scores(rows["text"]))
    with pytest.raises(ValueError, match="toy:siglip-32 has no separate projection"):
        projection_rows(load_model("toy:siglip-32", **tiny_world.load))


def test_pruned_accuracy_and_the_tables(tiny_world, purity_run):
    from cliplens.core.caches.rows import RowCache
    from cliplens.core.text.zeroshot import task_classifier

    out, _ = purity_run
    t = run_purity_eval(spec="toy:clip-vit", load=tiny_world.load, task="toy-colour",
                        cache=str(out / "test.h5"), roots=tiny_world.roots,
                        scores=str(out / "w.npz"), keep=[8, 32], seeds=2,
                        silhouette_sample=1000, out_csv=str(out / "e.csv"))
    assert len(t) == 1 + 2 * 2 * (2 + 2)  # all; image/text x k x (pure, impure, 2 random)
    W, ds, _ = task_classifier(load_model("toy:clip-vit", **tiny_world.load), "toy-colour",
                               tiny_world.roots)
    with RowCache(out / "test.h5", "embeddings") as rc:
        x = rc.load("embeddings").astype(np.float32)
    y = np.asarray(ds.labels)
    whole = t[t["mode"] == "all"].iloc[0]
    assert whole["accuracy"] == pytest.approx(((x @ W).argmax(1) == y).mean())
    mask = keep_mask(np.load(out / "w.npz")["image"], 8, "pure")
    r = t[(t["by"] == "image") & (t["mode"] == "pure") & (t["k"] == 8)].iloc[0]
    assert r["accuracy"] == pytest.approx((((x * mask) @ W).argmax(1) == y).mean())
    run_purity_table(models=["toy:clip-vit"], weights=[str(out / "w.json")],
                     evals=[str(out / "e.csv")], pairs=[["toy:clip-vit", "toy:clip-vit"]],
                     out_compare=str(out / "c.csv"), out_pruning=str(out / "p.csv"),
                     out_compare_png=str(out / "c.png"), out_pruning_png=str(out / "p.png"))
    c = pd.read_csv(out / "c.csv")
    assert c["model"].tolist() == ["toy:clip-vit", "toy:clip-vit - toy:clip-vit"]
    assert c["image_mean_abs"].iloc[0] == pytest.approx(
        json.loads((out / "w.json").read_text())["image"]["mean_abs"])
    assert c.iloc[1][["accuracy", "silhouette"]].abs().max() == 0
    assert (out / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_misalignment_features_finetune_and_table(tiny_world, purity_run):
    """Features before the projections rebuild the model's embeddings; a fine-tune that barely
    moves the projections scores what the model itself scores; Cs counts the swapped captions."""
    from cliplens.core.caches.rows import RowCache
    from cliplens.core.text.zeroshot import argmax_accuracy, task_classifier
    from cliplens.studies.purity.misalign_jobs import (run_purity_features, run_purity_finetune,
                                                       run_purity_misalign_table)

    out, weights = purity_run
    run_purity_features(spec="toy:clip-vit", load=tiny_world.load, dataset="toy", split="train",
                        captions="rich", images=100, tasks=["toy-colour"],
                        roots=tiny_world.roots, out_npz=str(out / "f.npz"))
    f = np.load(out / "f.npz")
    with RowCache(out / "test.h5", "embeddings") as rc:
        x = rc.load("embeddings").astype(np.float32)
    np.testing.assert_allclose(f["x:toy/test"] @ f["w_image"], x, rtol=1e-4, atol=1e-5)
    assert f["image"].shape[0] == len(f["caption_index"]) == 100
    assert f["caption_index"].max() < len(f["texts"])
    kw = dict(spec="toy:clip-vit", load=tiny_world.load, features=str(out / "f.npz"), seed=0,
              init="trained", tasks=["toy-colour"], roots=tiny_world.roots,
              include_diagonal=False, progress=False)
    still = run_purity_finetune(fraction=0.0, out_json=str(out / "cs0.json"),
                                train={"steps": 1, "batch_size": 16, "lr": 1e-12,
                                       "checkpoint_every": 0}, **kw)
    W, ds, _ = task_classifier(load_model("toy:clip-vit", **tiny_world.load), "toy-colour",
                               tiny_world.roots)
    assert still["accuracy"]["toy-colour"] == pytest.approx(
        argmax_accuracy(x, W, np.asarray(ds.labels)))
    assert still["image"]["mean_abs"] == pytest.approx(weights["image"]["mean_abs"], rel=1e-4)
    assert still["text"]["mean_abs"] == pytest.approx(weights["text"]["mean_abs"], rel=1e-4)
    moved = run_purity_finetune(fraction=0.5, out_json=str(out / "cs05.json"),
                                train={"steps": 10, "batch_size": 16, "lr": 1e-2,
                                       "checkpoint_every": 5}, **kw)
    assert 0 < moved["captions_changed"] <= 50 and moved["steps"] == 10
    assert still["partner_cosine"] is None and 0 < moved["partner_cosine"] <= 1
    assert moved["neighbours"] == {"search": "exact"}
    by_index = run_purity_finetune(fraction=0.5, out_json=str(out / "cs05-ivf.json"),
                                   neighbours={"search": "ivf", "probes": 4},
                                   train={"steps": 1, "batch_size": 16, "lr": 1e-2,
                                          "checkpoint_every": 0}, **kw)
    assert by_index["neighbours"]["search"] == "ivf" and by_index["captions_changed"] > 0
    assert moved["text"]["mean_abs"] != pytest.approx(still["text"]["mean_abs"])
    t = run_purity_misalign_table(results=[str(out / "cs0.json"), str(out / "cs05.json")],
                                  out_csv=str(out / "m.csv"), out_png=str(out / "m.png"))
    assert t["fraction"].tolist() == [0.0, 0.5] and "accuracy:toy-colour" in t
    with pytest.raises(ValueError, match="holds the features of 'toy:clip-vit'"):
        run_purity_finetune(**{**kw, "spec": "toy:siglip-32"}, fraction=0.0,
                            out_json=str(out / "x.json"),
                            train={"steps": 1, "batch_size": 16, "lr": 1e-3,
                                   "checkpoint_every": 0})
