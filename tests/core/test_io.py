import h5py
import numpy as np
import pytest

from cliplens.core.io import (
    ProvenanceError,
    atomic_path,
    check_provenance,
    mark_complete,
    set_provenance,
    write_json_atomic,
)


def test_atomic_path_leaves_nothing_when_the_writer_dies(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with h5py.File(tmp, "w") as h5:
                h5["x"] = np.arange(3)
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise ValueError
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_provenance_mismatch_names_every_key(tmp_path):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as h5:
        set_provenance(h5, {"model": "toy:clip-vit", "dtype": "float16", "layers": (1, 2)})
        mark_complete(h5)
    assert check_provenance(path, {"model": "toy:clip-vit", "layers": [1, 2]})["dtype"] == "float16"
    with pytest.raises(ProvenanceError) as err:
        check_provenance(path, {"model": "open_clip:ViT-B-16", "dtype": "float32"})
    assert "model" in str(err.value) and "dtype" in str(err.value)
