"""The shared rules' jobs (cliplens.core.jobs) on the tiny toy world: what each writes is what
the library computes, and a cache of another model is refused."""

import hashlib
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from cliplens.core import jobs
from cliplens.core.caches.embeddings import open_cache
from cliplens.core.data.registry import open_dataset
from cliplens.core.data.tasks import get_task
from cliplens.core.io import ProvenanceError, get_provenance
from cliplens.core.models.registry import load_model
from cliplens.core.text.zeroshot import build_classifier, zeroshot_accuracy
from cliplens.core.toy import world


def test_toy_world_job_writes_the_generated_splits(tiny_world, tmp_path):
    S = tiny_world.S
    path = tiny_world.results / "data/toy/toy.h5"
    with h5py.File(path) as h5:
        prov = get_provenance(h5)
        assert sorted(h5) == ["test", "train", "val"]
        drawn = world.generate("toy", S.toy, splits=["val"])["val"]
        np.testing.assert_array_equal(h5["val/images"][()], drawn.images)
        np.testing.assert_array_equal(h5["val/labels/shape"][()], drawn.labels["shape"])
    assert prov["dataset"] == "toy" and prov["generator"]["seed"] == S.toy.seed
    sizes = jobs.run_toy_world(dataset="toy-shift", cfg=S.toy.to_dict(), out=str(tmp_path / "s.h5"))
    assert sizes == {"test": len(S.toy.shift.years) * S.toy.shift.n_per_year}


def test_train_toy_model_job_saves_a_loadable_model(tiny_world):
    folder = tiny_world.results / "models/toy/clip-vit"
    meta = json.loads((folder / "cliplens_model.json").read_text())
    assert meta["steps"] == tiny_world.S.toy_models["clip-vit"].train.steps
    assert meta["config"] == tiny_world.S.toy_models["clip-vit"].to_dict()
    assert set(meta["zeroshot"]) == {"colour", "shape", "position", "size", "background"}
    model = load_model("toy:clip-vit", **tiny_world.load)
    assert model.family == "clip" and len(model.vision_blocks) == 1


@pytest.fixture(scope="module")
def embeddings(tiny_world, tmp_path_factory):
    """toy/test of toy:clip-vit in two shards, gathered."""
    folder = tmp_path_factory.mktemp("emb")
    shards = []
    for i in range(2):
        shards.append(str(folder / f"shards/embeddings.{i}-of-2.h5"))
        jobs.run_cache_shard(spec="toy:clip-vit", load=tiny_world.load, dataset="toy",
                             split="test", shard=i, n_shards=2, batch_size=16, dtype="float32",
                             normalize=False, roots=tiny_world.roots, out=shards[-1])
    out = folder / "embeddings.h5"
    prov = jobs.run_gather(shards=shards, out=str(out))
    assert prov["rows"] == 60
    return out


def test_cache_shards_gather_to_the_models_embeddings(tiny_world, embeddings):
    emb, labels, prov = open_cache(embeddings, {"model": "toy:clip-vit", "split": "test"})
    model = load_model("toy:clip-vit", **tiny_world.load)
    data = open_dataset("toy", "test", **tiny_world.roots)
    with torch.inference_mode():
        want = model.encode_image(model.preprocess(data.images(0, len(data))))
    np.testing.assert_allclose(emb, want.numpy(), rtol=1e-5, atol=1e-6)
    assert labels is None or len(labels) == 60


def test_zeroshot_eval_scores_the_cache_and_refuses_another_model(tiny_world, embeddings,
                                                                  tmp_path):
    task = get_task("toy-colour")
    templates = list(task.resolved_templates())
    result = jobs.run_zeroshot_eval(
        spec="toy:clip-vit", load=tiny_world.load, task="toy-colour", classnames=None,
        templates=templates, batch_size=64, dtype="float32", roots=tiny_world.roots,
        cache=str(embeddings), out=str(tmp_path / "r.json"))
    model = load_model("toy:clip-vit", **tiny_world.load)
    data = task.open(**tiny_world.roots)
    emb, _, _ = open_cache(embeddings)
    want = zeroshot_accuracy(emb, data.labels,
                             build_classifier(model, task.classnames_for(data), templates))
    assert result["top1"] == want["top1"] and result["classes"] == 8
    assert json.loads((tmp_path / "r.json").read_text())["top1"] == want["top1"]
    with pytest.raises(ProvenanceError, match="toy:siglip-32"):
        jobs.run_zeroshot_eval(
            spec="toy:siglip-32", load=tiny_world.load, task="toy-colour", classnames=None,
            templates=templates, batch_size=64, dtype="float32", roots=tiny_world.roots,
            cache=str(embeddings), out=str(tmp_path / "x.json"))


def test_zeroshot_table_and_figure(tmp_path):
    paths = []
    for m, t, top1 in (("toy:a", "toy-colour", 0.5), ("toy:a", "toy-shape", 0.25)):
        paths.append(tmp_path / f"{t}.json")
        paths[-1].write_text(json.dumps({"model": m, "task": t, "top1": top1, "top5": None,
                                         "mean_per_class": top1, "n": 10, "classes": 4}))
    table = jobs.run_zeroshot_table(results=[str(p) for p in paths],
                                    out=str(tmp_path / "t.csv"))
    back = pd.read_csv(tmp_path / "t.csv")
    assert list(back.columns) == jobs.ZEROSHOT_COLUMNS and back["top1"].tolist() == [0.5, 0.25]
    assert table["task"].tolist() == ["toy-colour", "toy-shape"]
    jobs.run_zeroshot_figure(table=str(tmp_path / "t.csv"), title="t", out=str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_download_job_verifies_the_file(tmp_path):
    from cliplens.core.data.catalog import ChecksumError

    src = tmp_path / "a.bin"
    src.write_bytes(b"cliplens" * 1000)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    out = jobs.run_download(url=src.as_uri(), out=str(tmp_path / "d/a.bin"), sha256=sha,
                            md5=None, size=8000)
    assert out.read_bytes() == src.read_bytes()
    with pytest.raises(ChecksumError):
        jobs.run_download(url=src.as_uri(), out=str(tmp_path / "d/b.bin"), sha256="0" * 64,
                          md5=None, size=None)
    assert not (tmp_path / "d/b.bin").exists()
