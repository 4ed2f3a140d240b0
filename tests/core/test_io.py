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


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it after."""
    import os

    saved = []

    def set_(mask):
        saved.append(os.umask(mask))

    yield set_
    if saved:
        os.umask(saved[0])


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755),
                                                     (0o027, 0o640, 0o750),
                                                     (0o002, 0o664, 0o775)])
def test_outputs_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    import os
    import stat

    from cliplens.core.io import apply_umask_modes, private_dir, write_json_atomic

    umask(mask)
    write_json_atomic(tmp_path / "a" / "out.json", {"x": 1})
    d = private_dir(tmp_path, prefix=".model.")
    assert stat.S_IMODE((tmp_path / "a" / "out.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == dir_mode
    assert stat.S_IMODE(d.stat().st_mode) == dir_mode
    # a library's private files (safetensors are written 0600) get the umask's modes too
    (d / "sub").mkdir(mode=0o700)
    (d / "sub" / "w.safetensors").write_bytes(b"x")
    os.chmod(d / "sub" / "w.safetensors", 0o600)
    apply_umask_modes(d)
    assert stat.S_IMODE((d / "sub").stat().st_mode) == dir_mode
    assert stat.S_IMODE((d / "sub" / "w.safetensors").stat().st_mode) == file_mode
