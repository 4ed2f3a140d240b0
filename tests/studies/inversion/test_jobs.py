"""Study 000's jobs (cliplens.studies.inversion.jobs) on the tiny toy world, each checked against
the library computation it stands for."""

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from cliplens.core.caches.tokens import open_tokens
from cliplens.core.data.views import open_view
from cliplens.core.io import ProvenanceError, mark_complete, set_provenance
from cliplens.core.models.registry import load_model
from cliplens.studies.inversion import jobs
from cliplens.studies.inversion.reconstructor import load_reconstructor, reconstruct, to_uint8

EXTRACTORS = ("toy:siglip-32", "toy:siglip2-32")


@pytest.fixture(scope="module")
def study(tiny_world, tmp_path_factory):
    """Token caches, one reconstructor and held-out reconstructions per extractor."""
    out = tmp_path_factory.mktemp("inversion")
    S = tiny_world.S
    train = S.inversion.train.replace(steps=6, batch_size=8, checkpoint_every=3, sample_every=3,
                                      sample_images=2)
    made = {}
    for spec in EXTRACTORS:
        slug = spec.replace(":", "--")
        shards = []
        for i in range(2):
            shards.append(out / slug / f"tokens.{i}-of-2.h5")
            jobs.run_token_shard(spec=spec, load=tiny_world.load, dataset="toy", split="train",
                                 key="images", layer=-2, rows="40", shard=i, n_shards=2,
                                 batch_size=16, dtype="float32", blue_factor=0.0,
                                 roots=tiny_world.roots, out=str(shards[-1]))
        from cliplens.core.jobs import run_gather

        run_gather(shards=[str(s) for s in shards], out=str(out / slug / "tokens.h5"))
        meta = jobs.run_train(
            spec=spec, load=tiny_world.load, tokens=str(out / slug / "tokens.h5"), dataset="toy",
            train_split="train", eval_split="test", layer=-2, train_images=40,
            reconstructor=S.inversion.reconstructor.to_dict(), train=train.to_dict(),
            roots=tiny_world.roots, out_dir=str(out / slug / "recon"), progress=False)
        jobs.run_heldout(spec=spec, load=tiny_world.load, recon_dir=str(out / slug / "recon"),
                         dataset="toy", split="test", n_images=10, layer=-2,
                         group="SigLIP2" if "siglip2" in spec else "SigLIP",
                         roots=tiny_world.roots, out=str(out / slug / "heldout.h5"))
        made[spec] = {"dir": out / slug, "meta": meta}
    return out, made


def test_token_shards_gather_to_the_towers_hidden_tokens(tiny_world, study):
    out, made = study
    model = load_model("toy:siglip-32", **tiny_world.load)
    data = open_view("toy", "train", **tiny_world.roots, rows=40)
    with open_tokens(made["toy:siglip-32"]["dir"] / "tokens.h5",
                     {"model": "toy:siglip-32", "layer": -2}) as cache:
        assert cache.shape[0] == 40 and cache.grid == (4, 4)
        with torch.inference_mode():
            want = model.tower.hidden_tokens(model.preprocess(data.images(0, 40)), -2)
        np.testing.assert_allclose(cache.read(range(40)), want.numpy(), rtol=1e-5, atol=1e-5)


def test_train_writes_a_reconstructor_that_resumes_from_its_checkpoint(tiny_world, study):
    out, made = study
    meta = made["toy:siglip-32"]["meta"]
    assert meta["steps"] == 6 and meta["train_pairs"] == 40 and meta["train_tokens"].startswith(
        "cached")
    assert [h[0] for h in meta["val_history"]] == [3.0, 6.0]
    folder = made["toy:siglip-32"]["dir"] / "recon"
    assert sorted(p.name for p in (folder / "checkpoints/samples").iterdir()) == [
        "step_000003.png", "step_000006.png"]
    again = jobs.run_train(  # the same job again resumes at its last step: no step is redone
        spec="toy:siglip-32", load=tiny_world.load, tokens=str(made["toy:siglip-32"]["dir"] /
                                                               "tokens.h5"),
        dataset="toy", train_split="train", eval_split="test", layer=-2, train_images=40,
        reconstructor=tiny_world.S.inversion.reconstructor.to_dict(),
        train=tiny_world.S.inversion.train.replace(
            steps=6, batch_size=8, checkpoint_every=3, sample_every=3,
            sample_images=2).to_dict(),
        roots=tiny_world.roots, out_dir=str(folder), progress=False)
    assert again["resumed_from"] == 6 and again["final_loss"] == meta["final_loss"]


def test_heldout_are_the_reconstructions_of_the_tokens(tiny_world, study):
    out, made = study
    spec = "toy:siglip2-32"
    model = load_model(spec, **tiny_world.load)
    net, _ = load_reconstructor(made[spec]["dir"] / "recon")
    data = open_view("toy", "test", **tiny_world.roots)
    with torch.inference_mode():
        tok = model.tower.hidden_tokens(model.preprocess(data.images(0, 10)), -2)
    recon, prov = jobs.read_heldout(made[spec]["dir"] / "heldout.h5")
    np.testing.assert_array_equal(recon, to_uint8(reconstruct(net, tok)))
    assert prov["group"] == "SigLIP2" and prov["resolution"] == 32 and prov["n"] == 10
    with pytest.raises(ValueError, match="trained on layer -2"):
        jobs.run_heldout(spec=spec, load=tiny_world.load, recon_dir=str(made[spec]["dir"] /
                                                                         "recon"),
                         dataset="toy", split="test", n_images=2, layer=-1, group="x",
                         roots=tiny_world.roots, out=str(out / "never.h5"))


def test_scoring_a_perfect_reconstruction_gives_cosine_one(tiny_world, study, tmp_path):
    """A 'reconstruction' that is the original image scores exactly 1; the summary table's means
    are the per-image means."""
    out, made = study
    data = open_view("toy", "test", **tiny_world.roots)
    perfect = tmp_path / "perfect.h5"
    with h5py.File(perfect, "w") as h5:
        h5["recon"] = np.stack([np.asarray(im) for im in data.images(0, 10)])
        set_provenance(h5, {"kind": "reconstructions", "model": "toy:identity", "group": "X",
                            "resolution": 32, "dataset": "toy", "split": "test", "n": 10})
        mark_complete(h5)
    table = jobs.run_scoring(
        scorer="toy:clip-vit", load=tiny_world.load, variants=["grayscale", "colour"],
        heldout=[made[s]["dir"] / "heldout.h5" for s in EXTRACTORS] + [perfect],
        roots=tiny_world.roots, out=str(tmp_path / "scores.csv"))
    assert len(table) == 3 * 2 * 10
    ident = table[table.extractor == "toy:identity"]["cosine"]
    np.testing.assert_allclose(ident, 1.0, atol=1e-5)
    assert (table["cosine"].abs() <= 1 + 1e-6).all()
    summary, diff = jobs.run_similarity_table(
        scores=[str(tmp_path / "scores.csv")], extractors=[*EXTRACTORS, "toy:identity"],
        summary=str(tmp_path / "s.csv"), per_image=str(tmp_path / "p.csv"),
        diff=str(tmp_path / "d.csv"))
    means = table.groupby(["variant", "extractor"])["cosine"].mean()
    for r in summary.itertuples():
        assert r.mean == pytest.approx(means[(r.variant, r.extractor)])
    assert set(diff["comparison"]) == {"SigLIP2 - SigLIP"}
    jobs.run_v1_vs_v2_figure(table=str(tmp_path / "s.csv"), layer=-2, dataset="toy",
                             split="test", out=str(tmp_path / "v.png"))
    assert (tmp_path / "v.png").read_bytes()[:4] == b"\x89PNG"


def test_reconstructions_figure_draws_the_heldout_arrays(tiny_world, study, tmp_path):
    out, made = study
    drawn = jobs.run_reconstructions_figure(
        heldout=[str(made[s]["dir"] / "heldout.h5") for s in EXTRACTORS], n_images=3,
        roots=tiny_world.roots, out=str(tmp_path / "r.png"), arrays=str(tmp_path / "r.npz"))
    with np.load(tmp_path / "r.npz") as z:
        assert sorted(z.files) == sorted(drawn)
        for spec in EXTRACTORS:
            np.testing.assert_array_equal(
                z[f"recon/{spec}"], jobs.read_heldout(made[spec]["dir"] / "heldout.h5")[0][:3])
        data = open_view("toy", "test", **tiny_world.roots)
        np.testing.assert_array_equal(z["original"],
                                      np.stack([np.asarray(im) for im in data.images(0, 3)]))


def test_operators_fit_the_views_and_refuse_another_models_tokens(tiny_world, study, tmp_path):
    out, made = study
    spec = "toy:siglip2-32"
    caches = {}
    for split, rows in (("train", "24"), ("test", "8")):
        for key in ("images", "images_rb_swap"):
            path = tmp_path / f"{split}.{key}.h5"
            jobs.run_token_shard(spec=spec, load=tiny_world.load, dataset="toy-colour-ops",
                                 split=split, key=key, layer=-2, rows=rows, shard=0, n_shards=1,
                                 batch_size=16, dtype="float32", blue_factor=0.0,
                                 roots=tiny_world.roots, out=str(path))
            caches.setdefault(split, {})[key] = str(path)
    rows, arrays = jobs.run_operators(
        spec=spec, load=tiny_world.load, recon_dir=str(made[spec]["dir"] / "recon"),
        train_caches=caches["train"], test_caches=caches["test"], dataset="toy-colour-ops",
        test_split="test", tasks={"rb_swap": ["procrustes", "linear"]}, ridge=0.0, n_examples=2,
        roots=tiny_world.roots, table=str(tmp_path / "ops.csv"), arrays=str(tmp_path / "o.npz"))
    table = pd.read_csv(tmp_path / "ops.csv")
    assert set(table["kind"]) == {"none", "true", "procrustes", "linear"}
    assert table.loc[table.kind == "true", "r2"].iloc[0] == pytest.approx(1.0)
    W = arrays["rb_swap/procrustes/W"].astype(np.float64)
    np.testing.assert_allclose(W.T @ W, np.eye(len(W)), atol=1e-5)  # orthogonal
    jobs.run_operator_figures(table=str(tmp_path / "ops.csv"), arrays=str(tmp_path / "o.npz"),
                              tasks=["rb_swap"], model=spec, outs=[str(tmp_path / "rb.png")])
    assert (tmp_path / "rb.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ProvenanceError):
        jobs.run_operators(
            spec="toy:siglip-32", load=tiny_world.load,
            recon_dir=str(made["toy:siglip-32"]["dir"] / "recon"),
            train_caches=caches["train"], test_caches=caches["test"], dataset="toy-colour-ops",
            test_split="test", tasks={"rb_swap": ["linear"]}, ridge=0.0, n_examples=2,
            roots=tiny_world.roots)
