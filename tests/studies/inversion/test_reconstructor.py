"""Study 000's reconstructor: architecture (stages, token normalisation, shape checks) and
saving/loading."""

import pytest
import torch

from cliplens.studies.inversion.reconstructor import (
    Reconstructor,
    load_reconstructor,
    save_reconstructor,
)

from .tiny import TINY, make_net



def test_reconstructor_shapes_and_stages():
    net = make_net()
    assert len(net.up) == 3  # 32 / 4 = 8 = 2^3: the last three channel widths
    out = net(torch.randn(2, 16, 24))
    assert out.shape == (2, 3, 32, 32)
    # tokens are L2-normalised inside: scaling them changes nothing
    x = torch.randn(2, 16, 24)
    assert torch.allclose(net(x), net(7.0 * x), atol=1e-5)
    assert len(Reconstructor(24, (8, 8), 32, **TINY).up) == 2
    with pytest.raises(ValueError, match="power of two"):
        Reconstructor(24, (4, 4), 24, **TINY)
    with pytest.raises(ValueError, match="channel widths"):
        Reconstructor(24, (2, 2), 64, **TINY)
    with pytest.raises(ValueError, match="expects 4x4"):
        net(torch.randn(1, 9, 24))


def test_saved_reconstructor_loads_back(tmp_path):
    net = make_net(seed=3)
    save_reconstructor(net, {"layer": -2}, tmp_path)
    back, meta = load_reconstructor(tmp_path)
    x = torch.randn(2, 16, 24)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), back(x))
    assert meta["layer"] == -2 and meta["config"]["grid"] == [4, 4]


def test_a_reconstructor_changed_after_saving_is_refused(tmp_path):
    from tests.corrupt import flip_byte

    from cliplens.core.io import CorruptFileError

    save_reconstructor(make_net(seed=3), {"layer": -2}, tmp_path)
    flip_byte(tmp_path / "reconstructor.safetensors")
    with pytest.raises(CorruptFileError, match="reconstructor.safetensors is damaged"):
        load_reconstructor(tmp_path)
