"""Study 003's jobs on the tiny world: stores of the toy clip-rn (pairs) and a 2-block toy ViT
(neurons), their components, the sparse text decomposition and the table."""

import json

import numpy as np
import pandas as pd
import pytest

from cliplens.core.caches.rows import RowCache
from cliplens.core.io import ProvenanceError
from cliplens.core.jobs import run_gather, run_texts, run_train_toy_model
from cliplens.core.models.registry import load_model
from cliplens.studies.neurons import jobs, responses
from cliplens.studies.neurons.components import components_dense
from cliplens.studies.neurons.pairs import decompose_pairs, pair_directions

MODELS = ("toy:clip-rn", "toy:clip-vit-2")


@pytest.fixture(scope="module")
def study(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("neurons")
    S = tiny_world.S
    for name in ("clip-rn", "clip-vit-2"):
        run_train_toy_model(name=name, cfg=S.toy_models[name].to_dict(), device="cpu",
                            data=str(tiny_world.results / "data" / "toy" / "toy.h5"),
                            out=str(tiny_world.results / "models" / "toy" / name))
    paths = {}
    for spec in MODELS:
        slug = spec.replace(":", "--")
        shards = [str(out / f"{slug}.{i}.h5") for i in range(2)]
        for i, shard in enumerate(shards):
            jobs.run_extract_shard(spec=spec, load=tiny_world.load, dataset="toy", split="val",
                                   images=40, shard=i, n_shards=2, layer=0, batch_size=16,
                                   dtype="float32", roots=tiny_world.roots, out=shard)
        store = str(out / f"{slug}.store.h5")
        run_gather(shards=shards, out=store)
        comp = str(out / f"{slug}.components.h5")
        jobs.run_components(spec=spec, load=tiny_world.load, store=store,
                            cfg={"top_k": 5, "block_rows": 7}, out=comp)
        texts = str(out / f"{slug}.texts.npz")
        run_texts(spec=spec, load=tiny_world.load,
                  sources=["builtin:toy-words", "builtin:toy-descriptions"], n_words=10,
                  out=texts)
        res = jobs.run_sparse(spec=spec, components_path=comp, texts=texts,
                              cfg={**S.neurons.sparse.to_dict(), "k": 4},
                              table={"top": 5, "texts": 3}, out_json=str(out / f"{slug}.json"),
                              out_txt=str(out / f"{slug}.txt"), out_csv=str(out / f"{slug}.csv"))
        paths[spec] = dict(store=store, comp=comp, texts=texts, res=res, slug=slug)
    return out, paths


def test_pair_store_holds_scalars_that_rebuild_the_embeddings(study, tiny_world):
    _, paths = study
    p = paths["toy:clip-rn"]
    model = load_model("toy:clip-rn", **tiny_world.load)
    with RowCache(p["store"], "neurons", {"model": "toy:clip-rn"}) as cache:
        s = cache.load("scalars")
        assert cache.provenance["units"] == "pairs" and len(cache) == 40
    pool = model.tower.attention_pool()
    assert s.shape[1:] == (pool.heads, pool.wv.shape[1])
    from cliplens.core.data.registry import open_dataset

    data = jobs.store_images(open_dataset("toy", "val", **tiny_world.roots), 40)  # spread
    import torch

    with torch.inference_mode():
        px = model.preprocess(data.images(0, 4))
        dec = decompose_pairs(model, px)
        emb = model.encode_image(px).numpy()
    np.testing.assert_allclose(s[:4], dec.scalars.numpy(), rtol=1e-5, atol=1e-6)
    rebuilt = np.einsum("bhc,hcd->bd", s[:4], dec.directions.numpy()) + dec.bias.numpy()
    np.testing.assert_allclose(rebuilt, emb, rtol=1e-4, atol=1e-5)


def test_components_equal_the_brute_force_on_the_materialised_store(study, tiny_world):
    _, paths = study
    comps, prov = jobs.read_components(paths["toy:clip-rn"]["comp"], "toy:clip-rn")
    model = load_model("toy:clip-rn", **tiny_world.load)
    u = pair_directions(model.tower.attention_pool()).numpy()
    with RowCache(paths["toy:clip-rn"]["store"], "neurons") as cache:
        s = cache.load("scalars").astype(np.float64)
    reps = (s[..., None] * u).reshape(len(s), -1, u.shape[-1])          # the brute-force array
    ref = components_dense(reps, 5)
    got = comps["pairs"]
    live = np.linalg.norm(u.reshape(-1, u.shape[-1]), axis=1) > 0
    cos = (got["pc0"] * ref.pc0).sum(1)[live]
    assert cos.min() >= 0.9999
    np.testing.assert_allclose(got["top_norms"], ref.top_norms, rtol=1e-4, atol=1e-7)
    assert prov["unit_shape"] == list(u.shape[:2]) and prov["images"] == 40

    comps, prov = jobs.read_components(paths["toy:clip-vit-2"]["comp"], "toy:clip-vit-2")
    assert set(comps) == {"exact", "published"} and prov["layer"] == 0
    with RowCache(paths["toy:clip-vit-2"]["store"], "neurons") as cache:
        for v in ("exact", "published"):
            full = cache.load(v).astype(np.float64)
            ref = components_dense(full, 5)
            np.testing.assert_allclose(comps[v]["mean"], ref.mean, rtol=1e-5, atol=1e-7)
            assert ((comps[v]["pc0"] * ref.pc0).sum(1) >= 0.9999).all()
            np.testing.assert_array_equal(comps[v]["top_images"], ref.top_images)
    with pytest.raises(ProvenanceError):
        jobs.read_components(paths["toy:clip-vit-2"]["comp"], "toy:clip-rn")


def test_sparse_texts_and_table(study):
    out, paths = study
    for spec, variants in (("toy:clip-rn", {"pairs"}), ("toy:clip-vit-2",
                                                         {"exact", "published"})):
        p = paths[spec]
        res = json.loads((out / f"{p['slug']}.json").read_text())
        assert set(res["variants"]) == variants
        for units in res["variants"].values():
            for entry in units.values():
                assert len(entry["texts"]) <= 4 and 0 <= entry["residual"] <= 1.0 + 1e-6
        table = pd.read_csv(out / f"{p['slug']}.csv")
        assert set(table["variant"]) == variants
        assert (table.groupby("variant")["rank"].max() == 5).all()
        first = table[table["rank"] == 1]
        assert (first["mean_top_norm"].values >= table.groupby("variant")["mean_top_norm"]
                .max().reindex(first["variant"]).values - 1e-9).all()
        txt = (out / f"{p['slug']}.txt").read_text()
        assert all(f"== {v}: the 5 units" in txt for v in variants), txt[:500]


def test_the_store_refuses_other_towers_and_caps_images(tiny_world, tmp_path):
    with pytest.raises(NotImplementedError, match="study 003 needs"):
        jobs.run_extract_shard(spec="toy:siglip-32", load=tiny_world.load, dataset="toy",
                               split="val", images=8, shard=0, n_shards=1, layer=0,
                               batch_size=8, dtype="float32", roots=tiny_world.roots,
                               out=str(tmp_path / "x.h5"))

    from cliplens.core.data.registry import open_dataset

    data = open_dataset("toy", "val", **tiny_world.roots)
    assert jobs.store_images(data, None) is data and jobs.store_images(data, 10_000) is data
    view = jobs.store_images(data, 7)
    assert len(view) == 7 and view.describe()["of_n"] == len(data)
    assert list(view.index) == [i * len(data) // 7 for i in range(7)]
    assert data.labels is None or np.array_equal(view.labels, np.asarray(data.labels)[view.index])
    assert np.array_equal(np.asarray(view.images(2, 3)[0]), np.asarray(data.image(view.index[2])))


@pytest.mark.parametrize("spec,name", [("toy:clip-vit-2", "exact"), ("toy:clip-vit-2", "published"),
                                       ("toy:clip-rn", "scalars")])
def test_the_streaming_path_equals_the_store(study, tiny_world, spec, name):
    """Components recomputed from the model on each pass (no store) equal those read out of
    core from the store: same means, norms, images and components."""
    from cliplens.core.data.registry import open_dataset
    from cliplens.studies.neurons.components import components
    from cliplens.studies.neurons.store import store_blocks, streamed_blocks

    _, paths = study
    model = load_model(spec, **tiny_world.load)
    data = jobs.store_images(open_dataset("toy", "val", **tiny_world.roots), 40)
    with RowCache(paths[spec]["store"], "neurons") as cache:
        if name == "scalars":
            u = pair_directions(model.tower.attention_pool()).numpy()
            from cliplens.studies.neurons.components import pair_components

            ref = pair_components(store_blocks(cache, name, 7), u, 5)
            got = pair_components(streamed_blocks(model, data, name, 0, batch_size=16), u, 5)
        else:
            ref = components(store_blocks(cache, name, 7), 5)
            got = components(streamed_blocks(model, data, name, 0, batch_size=16), 5)
    np.testing.assert_allclose(got.mean, ref.mean, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(got.top_norms, ref.top_norms, rtol=1e-4, atol=1e-8)
    live = got.top_norms[:, -1] > 1e-5 * (np.linalg.norm(got.mean, axis=1) + got.top_norms[:, 0])
    assert live.mean() > 0.5
    np.testing.assert_array_equal(got.top_images[live], ref.top_images[live])
    assert ((got.pc0 * ref.pc0).sum(1)[live] >= 0.9999).all()


@pytest.fixture(scope="module")
def effects(study, tiny_world):
    out, paths = study
    tables = {}
    for spec in MODELS:
        p = paths[spec]
        shard, store = str(out / f"{p['slug']}.test.0.h5"), str(out / f"{p['slug']}.test.h5")
        jobs.run_extract_shard(spec=spec, load=tiny_world.load, dataset="toy", split="test",
                               images=40, shard=0, n_shards=1, layer=0, batch_size=16,
                               dtype="float32", roots=tiny_world.roots, out=shard)
        run_gather(shards=[shard], out=store)
        tables[spec] = jobs.run_effects(
            spec=spec, load=tiny_world.load,
            cfg={"task": "toy-colour", "images": 40, "replace_n_texts": [1, 2, 4],
                 "percentiles": [0, 50, 90]},
            sparse={**tiny_world.S.neurons.sparse.to_dict(), "k": 4}, roots=tiny_world.roots,
            store=store, components_path=p["comp"], texts=p["texts"],
            out_csv=str(out / f"{p['slug']}.effects.csv"),
            out_png=str(out / f"{p['slug']}.effects.png"))
    return out, tables


def test_effects_tables_hold_the_algebra(effects, tiny_world):
    """The original accuracy is the model's own on the task's images; keeping every unit
    (percentile 0) changes nothing; pairs replaced by their first component are exactly
    themselves (rank one); the figure is drawn."""
    from cliplens.core.text.zeroshot import argmax_accuracy, task_classifier

    out, tables = effects
    for spec, t in tables.items():
        orig = t[t["what"] == "original"]["accuracy"].iloc[0]
        model = load_model(spec, **tiny_world.load)
        W, ds, _ = task_classifier(model, "toy-colour", tiny_world.roots)
        view = jobs.store_images(ds, 40)
        import torch

        with torch.inference_mode():
            emb = model.encode_image(model.preprocess(view.images(0, 40))).double().numpy()
        slug = spec.replace(":", "--")
        with RowCache(out / f"{slug}.test.h5", "neurons") as cache:
            stored = cache.load("embeddings").astype(np.float64)
        np.testing.assert_allclose(stored, emb, rtol=1e-4, atol=1e-6)  # the task's images
        assert orig == pytest.approx(argmax_accuracy(stored, W, view.labels))
        kept_all = t[(t["what"] == "ablated") & (t["percentile"] == 0)]
        assert kept_all["accuracy"].iloc[0] == pytest.approx(orig)
        assert int(kept_all["units_kept"].iloc[0]) == int(t["units"].iloc[0])
        top10 = t[(t["what"] == "ablated") & (t["percentile"] == 90)]
        assert int(top10["units_kept"].iloc[0]) == pytest.approx(0.1 * t["units"].iloc[0], abs=2)
        assert sorted(t.loc[t["what"] == "texts", "n_texts"]) == [1, 2, 4]
        if spec == "toy:clip-rn":
            comp = t[t["what"] == "component"]["accuracy"].iloc[0]
            assert comp == pytest.approx(orig)
        assert (out / f"{slug}.effects.png").read_bytes()[:4] == b"\x89PNG"


def _brute_activations(cache, spec, tiny_world, comp, variant):
    """[N, U] activations along the components, from the whole store in memory."""
    if variant == "pairs":
        model = load_model(spec, **tiny_world.load)
        u = pair_directions(model.tower.attention_pool()).double().numpy()
        reps = cache.load("scalars").astype(np.float64)[..., None] * u
        reps = reps.reshape(len(reps), -1, u.shape[-1])
    else:
        reps = cache.load(variant).astype(np.float64)
    d = comp["pc0"] / np.maximum(np.linalg.norm(comp["pc0"], axis=1, keepdims=True), 1e-300)
    return np.einsum("nud,ud->nu", reps - reps.mean(0), d), reps


def test_retrieval_shows_the_top_images_of_each_row(study, tiny_world):
    """Each row's images are the store's largest activations (pairs, ViT variants) or centred
    neuron norms (all pairs of a channel), as rows of the split; a missing neuron is named."""
    out, paths = study
    for spec in MODELS:
        p = paths[spec]
        pngs = [str(out / f"{p['slug']}.retrieval.{i}.png") for i in (1, 2)]
        table = responses.run_retrieval(
            spec=spec, load=tiny_world.load, cfg={"auto": 2, "images": 3, "pairs": 2},
            roots=tiny_world.roots, store=p["store"], components_path=p["comp"],
            sparse_json=str(out / f"{p['slug']}.json"), out_csv=str(out / "r.csv"), out_pngs=pngs)
        comps, prov = jobs.read_components(p["comp"], spec)
        with RowCache(p["store"], "neurons") as cache:
            index = jobs.store_view(cache.provenance, len(cache), tiny_world.roots).index
            variants = ["pairs"] if prov["units"] == "pairs" else ["exact", "published"]
            acts = {v: _brute_activations(cache, spec, tiny_world, comps[v], v) for v in variants}
        neurons = table["neuron"].unique()
        assert len(neurons) == 2 and all(open(f, "rb").read(4) == b"\x89PNG" for f in pngs)
        for c in neurons:
            rows = table[table["neuron"] == c]
            for label, got in rows.groupby("row", sort=False):
                if label.startswith("neuron"):                   # all heads of channel c
                    heads = prov["unit_shape"][0]
                    reps = acts["pairs"][1].reshape(len(index), heads, -1, acts["pairs"][1].shape[-1])
                    values = np.linalg.norm((reps - reps.mean(0))[:, :, c].sum(1), axis=-1)
                else:
                    unit = label.split()[1].rstrip(":")
                    names = jobs.unit_names(prov)
                    v = "pairs" if prov["units"] == "pairs" else label.split()[1].rstrip(":")
                    if prov["units"] == "pairs":
                        values = acts[v][0][:, names.index(unit)]
                    else:
                        values = acts[v][0][:, c]
                want = index[np.argsort(-values, kind="stable")[:3]]
                assert list(got.sort_values("rank")["image"]) == list(want), (spec, label)
            if prov["units"] == "pairs":
                assert len(rows["row"].unique()) == 3          # the neuron and its 2 strongest pairs
    with pytest.raises(ValueError, match="do not exist"):
        responses.run_retrieval(spec="toy:clip-rn", load=tiny_world.load,
                           cfg={"neurons": [10 ** 6]}, roots=tiny_world.roots,
                           store=paths["toy:clip-rn"]["store"],
                           components_path=paths["toy:clip-rn"]["comp"],
                           sparse_json=str(out / "toy--clip-rn.json"),
                           out_csv=str(out / "r.csv"), out_pngs=[str(out / "x.png")])


def test_segmentation_from_pairs_scores_maps_and_refuses_vits(study, tiny_world):
    from cliplens.core.segmentation import centre_prior

    out, paths = study
    p = paths["toy:clip-rn"]
    table = responses.run_segmentation(
        spec="toy:clip-rn", load=tiny_world.load,
        cfg={"task": "toy-colour", "images": 12, "pairs_per_class": 3, "batch_size": 5,
             "show": 2}, roots=tiny_world.roots, components_path=p["comp"],
        out_csv=str(out / "seg.csv"), out_png=str(out / "seg.png"))
    assert list(table["method"]) == ["matched pairs", "all pairs", "centre prior"]
    assert (table["n"] == 12).all()
    for col in ("pixel_accuracy", "miou", "iou_fg", "iou_bg"):
        assert table[col].between(0, 1).all()
    # the prior's row is the prior scored on the same masks (nothing depends on the model)
    prior = table[table["method"] == "centre prior"].iloc[0]
    assert prior["miou"] == pytest.approx((prior["iou_fg"] + prior["iou_bg"]) / 2)
    assert centre_prior(8).argmax() in (27, 28, 35, 36)
    assert (out / "seg.png").read_bytes()[:4] == b"\x89PNG"
    # PASCAL Context-59 (class masks): every pixel gets the class of largest map
    from tests.fake_data import pascal_context

    pascal_context(tiny_world.results.parent, ["a", "b", "c"], np.random.default_rng(0))
    t = responses.run_segmentation(
        spec="toy:clip-rn", load=tiny_world.load,
        cfg={"task": "pascal-context", "images": None, "pairs_per_class": 3, "show": 2},
        roots=tiny_world.roots, components_path=p["comp"], out_csv=str(out / "pc.csv"),
        out_png=str(out / "pc.png"))
    assert list(t["method"]) == ["matched pairs", "all pairs"] and (t["n"] == 3).all()
    assert t["miou"].between(0, 1).all() and (t["classes"] <= 59).all()
    assert (out / "pc.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="needs a CLIP ResNet"):
        responses.run_segmentation(spec="toy:clip-vit-2", load=tiny_world.load, cfg={"images": 4},
                              roots=tiny_world.roots,
                              components_path=paths["toy:clip-vit-2"]["comp"],
                              out_csv=str(out / "s2.csv"), out_png=str(out / "s2.png"))


@pytest.fixture(scope="module")
def shift_stores(study, tiny_world):
    from cliplens.core.jobs import run_toy_world

    out, paths = study
    run_toy_world(dataset="toy-shift", cfg=tiny_world.S.toy.to_dict(),
                  out=str(tiny_world.results / "data" / "toy" / "toy-shift.h5"))
    stores = {}
    for spec in MODELS:
        shard, store = (str(out / f"{paths[spec]['slug']}.shift.{x}.h5") for x in ("0", "all"))
        jobs.run_extract_shard(spec=spec, load=tiny_world.load, dataset="toy-shift",
                               split="test", images=None, shard=0, n_shards=1, layer=0,
                               batch_size=64, dtype="float32", roots=tiny_world.roots, out=shard)
        run_gather(shards=[shard], out=store)
        stores[spec] = store
    return stores


def test_concept_tracking_per_year_against_the_true_share(study, shift_stores, tiny_world):
    """Years and true shares come from the toy-shift labels; the activation is the signed
    mean of the units naming the concept; the correlations are Pearson's."""
    from cliplens.core.data.registry import open_dataset
    from cliplens.core.toy.world import COLOURS

    out, paths = study
    S = tiny_world.S
    data = open_dataset("toy-shift", "test", **tiny_world.roots)
    years = np.asarray(S.toy.shift.years)[data.factor_labels["year"]]
    yellow = data.factor_labels["colour"] == COLOURS.index("yellow")
    cfg = {"concept": ["yellow", "golden", "lemon", "red", "a"], "texts": 4}
    for spec in MODELS:
        p = paths[spec]
        t = responses.run_shift(spec=spec, load=tiny_world.load, cfg=cfg, roots=tiny_world.roots,
                           store=shift_stores[spec], components_path=p["comp"],
                           sparse_json=str(out / f"{p['slug']}.json"),
                           years=list(S.toy.shift.years), out_csv=str(out / "shift.csv"),
                           out_png=str(out / "shift.png"))
        assert list(t["year"]) == list(S.toy.shift.years)
        assert (t["images"] == S.toy.shift.n_per_year).all()
        want = [yellow[years == y].mean() for y in t["year"]]
        np.testing.assert_allclose(t["true_share"], want)
        assert (t["units"] > 0).all()
        r = np.corrcoef(t["true_share"], t["activation"])[0, 1]
        assert t["r_truth"].iloc[0] == pytest.approx(r)
        assert t["r_truth_low"].iloc[0] <= r <= t["r_truth_high"].iloc[0]
    t = responses.run_shift(spec="toy:clip-rn", load=tiny_world.load, cfg={"concept": ["zzz"]},
                       roots=tiny_world.roots, store=shift_stores["toy:clip-rn"],
                       components_path=paths["toy:clip-rn"]["comp"],
                       sparse_json=str(out / "toy--clip-rn.json"), years=None,
                       out_csv=str(out / "shift0.csv"), out_png=str(out / "shift0.png"))
    assert (t["units"] == 0).all() and t["activation"].isna().all()
    assert list(t["year"]) == list(range(len(S.toy.shift.years)))      # year indices


def test_evidence_counts_agreement_against_chance(study, tiny_world):
    out, paths = study
    for spec in MODELS:
        p = paths[spec]
        summary = responses.run_evidence(spec=spec, load=tiny_world.load, cfg={"texts": 3},
                                    roots=tiny_world.roots, store=p["store"],
                                    components_path=p["comp"],
                                    sparse_json=str(out / f"{p['slug']}.json"),
                                    out_csv=str(out / "ev.csv"), out_json=str(out / "ev.json"),
                                    out_png=str(out / "ev.png"))
        t = pd.read_csv(out / "ev.csv")
        named = t[t["text_factor"].notna()]
        assert summary["all"]["units"] == len(named)
        assert summary["all"]["rate"] == pytest.approx((named["text_factor"]
                                                        == named["probe_factor"]).mean())
        pn = named["text_factor"].value_counts(normalize=True)
        pp = named["probe_factor"].value_counts(normalize=True)
        chance = sum(pn.get(f, 0) * pp.get(f, 0) for f in summary["factors"])
        assert summary["all"]["chance"] == pytest.approx(chance)
        r2 = t[[f"r2_{f}" for f in summary["factors"]]].to_numpy()
        assert (t["probe_r2"].to_numpy() == r2.max(1)).all() and (r2 <= 1 + 1e-12).all()
        assert (out / "ev.png").read_bytes()[:4] == b"\x89PNG"


def test_years_come_from_toy_labels_or_the_model_year_of_a_class_name():
    from types import SimpleNamespace

    cars = SimpleNamespace(name="stanford-cars", split="train", labels=np.array([1, 0, 1]),
                           classnames=["AM General Hummer SUV 2000", "Acura RL Sedan 2012"])
    years, what = responses._years(cars, None)
    assert years.tolist() == [2012, 2000, 2012] and what == "model year"
    toy = SimpleNamespace(factor_labels={"year": np.array([0, 2, 1])})
    assert responses._years(toy, [2000, 2001, 2002])[0].tolist() == [2000, 2002, 2001]
    pets = SimpleNamespace(name="pets", split="test", labels=np.array([0]), classnames=["pug"])
    with pytest.raises(ValueError, match="has no years"):
        responses._years(pets, None)
