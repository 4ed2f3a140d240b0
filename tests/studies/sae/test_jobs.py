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


def test_streamed_and_in_memory_training_give_the_same_sae(cache, tmp_path):
    a = run_train_sae(spec="fake:linear", cache=str(cache), sae=SAE, train=TRAIN,
                      out_dir=str(tmp_path / "a"), progress=False)
    b = run_train_sae(spec="fake:linear", cache=str(cache), sae=SAE,
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
