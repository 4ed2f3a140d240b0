"""Training an SAE job on an embedding cache: streamed or in memory, the same weights; saved
with a digest that refuses a changed file; a cache of another model refused by name."""

import pytest
import torch

from cliplens.core.caches.embeddings import extract_embeddings
from cliplens.core.io import CorruptFileError, ProvenanceError
from cliplens.studies.sae.jobs import WEIGHTS_FILE, load_sae, run_train_sae
from tests.core.caches.test_rows import FakeClip, FakeDataset

SAE = {"kind": "topk", "expansion": 2, "k": 3}
TRAIN = {"batch_size": 8, "epochs": 3, "lr": 1e-3, "seed": 0, "memory_mb": 64,
         "checkpoint_every": 5}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("sae") / "embeddings.h5"
    extract_embeddings(FakeClip(), FakeDataset(n=37), path, dtype="float32", progress=False)
    return path


@pytest.mark.parametrize("sae", [SAE, {"kind": "relu_l1", "expansion": 2, "l1": 1e-3}])
def test_streamed_and_in_memory_training_give_the_same_sae(cache, tmp_path, sae):
    a = run_train_sae(spec="fake:linear", cache=str(cache), sae=sae, train=TRAIN,
                      out_dir=str(tmp_path / "a"), progress=False)
    torch.manual_seed(123)                        # the job seeds every initialisation itself
    b = run_train_sae(spec="fake:linear", cache=str(cache), sae=sae,
                      train={**TRAIN, "memory_mb": 0}, out_dir=str(tmp_path / "b"),
                      progress=False)
    assert a["steps"] == b["steps"] == round(3 * 37 / 8)
    sa, meta = load_sae(tmp_path / "a")
    sb, _ = load_sae(tmp_path / "b")
    assert meta["settings"]["m"] == 2 * meta["settings"]["d"] and meta["cache"]["n"] == 37
    for k, v in sa.state_dict().items():
        torch.testing.assert_close(sb.state_dict()[k], v, rtol=0, atol=0)


def test_a_changed_weights_file_and_another_models_cache_are_refused(cache, tmp_path):
    run_train_sae(spec="fake:linear", cache=str(cache), sae=SAE, train=TRAIN,
                  out_dir=str(tmp_path / "a"), progress=False)
    w = tmp_path / "a" / WEIGHTS_FILE
    raw = bytearray(w.read_bytes())
    raw[-1] ^= 1
    w.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="SHA-256"):
        load_sae(tmp_path / "a")
    with pytest.raises(ProvenanceError, match="model"):
        run_train_sae(spec="open_clip:ViT-B-32", cache=str(cache), sae=SAE, train=TRAIN,
                      out_dir=str(tmp_path / "c"), progress=False)
    with pytest.raises(ValueError, match="k = 300 active latents"):
        run_train_sae(spec="fake:linear", cache=str(cache), sae={**SAE, "k": 300},
                      train=TRAIN, out_dir=str(tmp_path / "d"), progress=False)


@pytest.fixture(scope="module")
def toy_sae(tiny_world, tmp_path_factory):
    """The tiny clip-vit's toy/train and toy/test caches and a TopK SAE trained on the first."""
    from cliplens.core.jobs import run_cache_shard

    out = tmp_path_factory.mktemp("toy_sae")
    for split in ("train", "test"):
        run_cache_shard(spec="toy:clip-vit", load=tiny_world.load, dataset="toy", split=split,
                        shard=0, n_shards=1, batch_size=64, dtype="float32", normalize=False,
                        roots=tiny_world.roots, out=str(out / f"{split}.h5"))
    run_train_sae(spec="toy:clip-vit", cache=str(out / "train.h5"),
                  sae={"kind": "topk", "expansion": 4, "k": 8},
                  train={**TRAIN, "epochs": 4, "batch_size": 32}, out_dir=str(out / "sae"),
                  progress=False)
    return out


def test_evaluation_scores_clip_and_clip_plus_sae_with_one_classifier(tiny_world, toy_sae):
    import numpy as np

    from cliplens.core.caches.rows import RowCache
    from cliplens.core.models.registry import load_model
    from cliplens.core.text.zeroshot import task_classifier
    from cliplens.studies.sae.jobs import run_evaluate_sae

    spec, tmp_path = "toy:clip-vit", toy_sae
    res = run_evaluate_sae(spec=spec, load=tiny_world.load, sae_dir=str(tmp_path / "sae"),
                           task="toy-colour", cache=str(tmp_path / "test.h5"),
                           roots=tiny_world.roots, out=str(tmp_path / "eval.json"))
    W, ds, _ = task_classifier(load_model(spec, **tiny_world.load), "toy-colour",
                               tiny_world.roots)
    with RowCache(tmp_path / "test.h5", "embeddings") as rc:
        x = rc.load("embeddings").astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sae, _ = load_sae(tmp_path / "sae")
    with torch.no_grad():
        xh = sae(torch.as_tensor(x, dtype=torch.float32))[0].double().numpy()
    y = np.asarray(ds.labels)
    assert res["n"] == len(y) == 60 and res["l0"] <= 8
    assert res["accuracy_clip"] == pytest.approx(((x @ W).argmax(1) == y).mean())
    assert res["accuracy_sae"] == pytest.approx(((xh @ W).argmax(1) == y).mean())
    assert 0 <= res["dead"] <= 1 and res["r2"] <= 1
    with pytest.raises(ProvenanceError):
        run_evaluate_sae(spec=spec, load=tiny_world.load, sae_dir=str(tmp_path / "sae"),
                         task="toy-shape", cache=str(tmp_path / "train.h5"),
                         roots=tiny_world.roots, out=str(tmp_path / "x.json"))


def test_features_rank_images_and_measure_purity_against_the_factors(tiny_world, toy_sae):
    import json

    import numpy as np
    import pandas as pd

    from cliplens.core.caches.rows import RowCache
    from cliplens.core.data.registry import open_dataset
    from cliplens.core.toy.world import FACTORS
    from cliplens.studies.sae.jobs import run_sae_features

    out = toy_sae
    summary = run_sae_features(spec="toy:clip-vit", sae_dir=str(out / "sae"),
                               cache=str(out / "train.h5"), roots=tiny_world.roots, top=5,
                               show=4, out_csv=str(out / "f.csv"), out_json=str(out / "f.json"),
                               out_collages=str(out / "c.png"), out_histograms=str(out / "h.png"),
                               describe=3, out_collage_dir=str(out / "collages"))
    t = pd.read_csv(out / "f.csv", keep_default_na=False)
    sae, _ = load_sae(out / "sae")
    with RowCache(out / "train.h5", "embeddings") as rc:
        x = rc.load("embeddings").astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with torch.no_grad():
        z = sae.encode(torch.as_tensor(x)).numpy()
    assert len(t) == sae.m and summary["images"] == len(x) == 240
    np.testing.assert_allclose(t["firing_rate"], (z > 0).mean(0))
    labels = open_dataset("toy", "train", **tiny_world.roots).factor_labels
    live = t[t["live"].astype(str) == "True"]
    assert len(live) == summary["live"] > 0
    for _, r in live.head(5).iterrows():
        j = int(r["feature"])
        want = np.lexsort((np.arange(len(z)), -z[:, j]))[:5]
        assert [int(v) for v in r["top_rows"].split(";")] == list(want)
        best = max(np.unique(np.asarray(labels[f])[want], return_counts=True)[1].max() / 5
                   for f in FACTORS)
        assert float(r["purity"]) == pytest.approx(best)
    assert json.loads((out / "f.json").read_text())["chance_median"] <= 1
    assert (out / "c.png").read_bytes()[:4] == (out / "h.png").read_bytes()[:4] == b"\x89PNG"
    # one collage per described feature: the 3 live features firing most often, top image first
    from PIL import Image

    order = live.sort_values("firing_rate", ascending=False, kind="stable")["feature"].head(3)
    assert sorted(int(p.stem) for p in (out / "collages").glob("*.png")) == sorted(order)
    j = int(order.iloc[0])
    tile = np.asarray(Image.open(out / "collages" / f"{j}.png"))[:64, :64]
    first = int(t.loc[j, "top_rows"].split(";")[0])
    data = open_dataset("toy", "train", **tiny_world.roots)
    want = np.asarray(data.image(first).convert("RGB").resize((64, 64)))
    np.testing.assert_array_equal(tile, want)


def described(tiny_world, toy_sae):
    """``toy_sae``'s folder with the features table and the collages of 3 described features
    (written by the features test, or here when it ran first)."""
    from cliplens.studies.sae.jobs import run_sae_features

    out = toy_sae
    if not (out / "collages").exists():
        run_sae_features(spec="toy:clip-vit", sae_dir=str(out / "sae"),
                         cache=str(out / "train.h5"), roots=tiny_world.roots, top=5, show=2,
                         out_csv=str(out / "f.csv"), out_json=str(out / "f.json"),
                         out_collages=str(out / "c.png"), out_histograms=str(out / "h.png"),
                         describe=3, out_collage_dir=str(out / "collages"))
    return out


def test_interpretation_labels_scores_and_reports_the_described_features(tiny_world, toy_sae,
                                                                         monkeypatch):
    """The offline baseline end to end: each described feature gets the English text nearest
    its decoder direction and the Russian text at the same index; a rerun asks nothing; the
    scores are recomputed here from their definitions."""
    import json

    import numpy as np
    import pandas as pd

    from cliplens.core.caches.rows import RowCache
    from cliplens.core.models.registry import load_model
    from cliplens.core.text.textsets import embed_texts, toy_descriptions
    from cliplens.studies.sae import endpoint
    from cliplens.studies.sae.interpret import decoder_directions, nearest_texts
    from cliplens.studies.sae.interpret_jobs import JOURNAL, run_interpret, run_sae_report

    out = described(tiny_world, toy_sae)
    settings = tiny_world.S.sae.interpret.to_dict()
    kw = dict(spec="toy:clip-vit", load=tiny_world.load, sae_dir=str(out / "sae"),
              cache=str(out / "train.h5"), features_csv=str(out / "f.csv"),
              collage_dir=str(out / "collages"), interpret={**settings, "random_images": 50},
              out_csv=str(out / "i.csv"), out_json=str(out / "i.json"), progress=False)
    summary = run_interpret(**kw)
    t = pd.read_csv(out / "i.csv", keep_default_na=False)
    features = sorted(int(p.stem) for p in (out / "collages").glob("*.png"))
    assert sorted(t["feature"].unique()) == features and len(t) == 2 * len(features)
    assert set(t["interpreter"]) == {"baseline:nearest-text"} and t["baseline"].all()
    model = load_model("toy:clip-vit", **tiny_world.load)
    en, ru = toy_descriptions(), toy_descriptions("ru")
    sae, _ = load_sae(out / "sae")
    idx, _ = nearest_texts(decoder_directions(sae)[features], embed_texts(model, en))
    for j, i in zip(features, idx[:, 0]):
        row = t[t["feature"] == j].set_index("language")
        assert row.at["en", "text"] == en[i] and row.at["ru", "text"] == ru[i]
        assert row.at["ru", "flags"] == row.at["en", "flags"] == ""
    # the detection AUC from its definition, for one description
    r = t.iloc[0]
    with RowCache(out / "train.h5", "embeddings") as rc:
        x = rc.load("embeddings").astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ft = pd.read_csv(out / "f.csv", keep_default_na=False).set_index("feature")
    pos = [int(v) for v in ft.at[r["feature"], "top_rows"].split(";")]
    s = x @ embed_texts(model, [r["text"]])[0]
    neg = np.random.default_rng(int(r["feature"])).choice(
        np.setdiff1d(np.arange(len(x)), pos), size=50, replace=False)
    diff = s[pos][:, None] - s[neg][None, :]  # AUC: the share of (top, random) pairs in order
    wins = (diff > 0).mean() + 0.5 * (diff == 0).mean()
    assert float(r["detection_auc"]) == pytest.approx(wins)
    assert summary["baseline"] and set(summary["stats"]) == {"en", "ru"}
    assert summary["stats"]["en"]["names_value"] == pytest.approx(t[t.language == "en"]
                                                                  ["names_value"].eq("True").mean())
    # a rerun asks nothing: the journal holds one row per feature and language
    lines = (out / "sae" / JOURNAL).read_text().splitlines()
    monkeypatch.setattr(endpoint.Journal, "append", lambda *a: pytest.fail("asked twice"))
    run_interpret(**kw)
    assert len(lines) == len(t) == len({(json.loads(x)["feature"], json.loads(x)["language"])
                                        for x in lines})
    pd.DataFrame([{"sae": "s", "dataset": "toy", "task": "toy-colour", "kind": "topk",
                   "accuracy_clip": 0.9, "accuracy_sae": 0.8, "dict_size": 128, "l0": 8,
                   "mse": 0.01, "l1": 1.0, "r2": 0.9, "dead": 0.1, "dense": 0.0, "n": 60}]
                 ).to_csv(out / "m.csv", index=False)
    run_sae_report(metrics_csv=[str(out / "m.csv")], out_html=str(out / "report" / "index.html"),
                   saes=[{"name": "s", "model": "toy:clip-vit", "dataset": "toy",
                          "interpretations": str(out / "i.csv"), "summary": str(out / "i.json"),
                          "collages": str(out / "collages")}])
    page = (out / "report" / "index.html").read_text()
    assert page.count('class="collage"') == len(features) and "../collages/" in page
    assert "offline baseline" in page and en[idx[0, 0]] in page


def test_interpretation_through_an_endpoint_sends_each_collage(tiny_world, toy_sae, monkeypatch):
    """The endpoint interpreter against a loopback server: one request per feature and
    language carrying that feature's collage; rows marked with the endpoint, not the baseline."""
    import base64

    import pandas as pd

    from cliplens.studies.sae.interpret_jobs import run_interpret
    from tests.studies.sae.test_endpoint import KEY, Server

    out = described(tiny_world, toy_sae)
    monkeypatch.setenv("CLIPLENS_TEST_KEY", KEY)
    settings = tiny_world.S.sae.interpret.to_dict()
    with Server(["500"]) as srv:
        endpoint = {**settings["endpoint"], "base_url": srv.url, "model": "vlm",
                    "key_env": "CLIPLENS_TEST_KEY", "retries": 1, "concurrency": 2}
        summary = run_interpret(spec="toy:clip-vit", load=tiny_world.load,
                                sae_dir=str(out / "sae"), cache=str(out / "train.h5"),
                                features_csv=str(out / "f.csv"),
                                collage_dir=str(out / "collages"),
                                interpret={**settings, "interpreter": "endpoint",
                                           "endpoint": endpoint, "random_images": 20},
                                out_csv=str(out / "e.csv"), out_json=str(out / "e.json"),
                                progress=False)
        sent = {}
        for _, what, _, body in srv.seen:
            if what == "ok":
                parts = body["messages"][0]["content"]
                sent[parts[0]["text"]] = sent.get(parts[0]["text"], []) + [
                    base64.b64decode(parts[1]["image_url"]["url"].split(",", 1)[1])]
    t = pd.read_csv(out / "e.csv", keep_default_na=False)
    features = sorted(int(p.stem) for p in (out / "collages").glob("*.png"))
    assert len(t) == 2 * len(features) and not summary["baseline"]
    assert set(t["interpreter"]) == {f"{srv.url}#vlm"}
    assert t["baseline"].astype(str).eq("False").all()
    assert sorted(sent) == sorted(settings["prompts"].values())
    for images in sent.values():  # every feature's own collage, once per language
        assert sorted(images) == sorted((out / "collages" / f"{j}.png").read_bytes()
                                        for j in features)
    assert t["raw"].str.startswith("answer to").all()
    assert KEY not in (out / "e.csv").read_text() + (out / "e.json").read_text()
