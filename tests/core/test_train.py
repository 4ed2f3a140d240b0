"""The one training loop: its schedule, its step, the finite-loss guard, clipping, and
checkpoints that resume to the very weights an uninterrupted run reaches."""

import math

import pytest
import torch

from cliplens.core.train import (TrainLoop, fingerprint, load_checkpoint, lr_factor,
                                 window_means)


def test_schedule_warms_up_linearly_then_decays_by_cosine():
    steps, warm = 100, 10
    f = [lr_factor(s, steps, warm, 0.1) for s in range(steps)]
    assert f[:warm] == pytest.approx([(s + 1) / warm for s in range(warm)])
    assert f[warm] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1:]))  # non-increasing
    mid = warm + (steps - warm) // 2
    assert f[mid] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(steps, steps, warm, 0.1) == pytest.approx(0.1)  # the end: min_factor
    assert lr_factor(10 * steps, steps, warm, 0.1) == pytest.approx(0.1)  # and after it
    assert lr_factor(0, 5, 0) == pytest.approx(1.0)  # no warm-up starts at the peak


def _problem(seed=0):
    """Least squares y = x A + noise: a linear layer, its data and the exact solution."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 6, generator=g)
    a = torch.randn(6, 3, generator=g)
    y = x @ a + 0.01 * torch.randn(256, 3, generator=g)
    torch.manual_seed(seed)
    net = torch.nn.Linear(6, 3, bias=False)
    return net, x, y, torch.linalg.lstsq(x, y).solution.T


def _loop(net, steps, **kw):
    return TrainLoop(net, torch.optim.Adam(net.parameters(), lr=0.05), steps=steps,
                     warmup_steps=5, progress=False, **kw)


def test_loop_fits_a_least_squares_problem():
    net, x, y, solution = _problem()
    loop = _loop(net, 300)
    losses = loop.run(lambda step: (torch.nn.functional.mse_loss(net(x), y), {}))
    assert len(losses) == 300 and losses[-1] < 0.01 * losses[0]
    torch.testing.assert_close(net.weight.detach(), solution, atol=2e-2, rtol=0)
    assert not net.training  # eval mode afterwards


def test_a_diverging_loss_stops_with_the_step_and_the_advice():
    net, x, y, _ = _problem()
    loop = TrainLoop(net, torch.optim.SGD(net.parameters(), lr=1.0), steps=50, progress=False,
                     desc="train toy", hint="lower train.lr")

    def loss(step):
        return (net(x) - y).pow(2).mean() * (float("nan") if step == 7 else 1.0), {}

    with pytest.raises(FloatingPointError, match=r"train toy: loss became nan at step 7; "
                                                 r"lower train\.lr"):
        loop.run(loss)


def test_gradient_clipping_bounds_each_step():
    """SGD at lr 1 (no warm-up: factor 1 at step 0): a clipped step moves the weights by at most
    the clip norm, an unclipped one by the whole (huge) gradient."""
    for clip, bound in ((0.5, 0.5 + 1e-6), (0.0, None)):
        net, x, y, _ = _problem()
        w0 = net.weight.detach().clone()
        loop = TrainLoop(net, torch.optim.SGD(net.parameters(), lr=1.0), steps=1,
                         grad_clip=clip, progress=False)
        loop.run(lambda step: (1e4 * (net(x) - y).pow(2).mean(), {}))
        moved = float((net.weight.detach() - w0).norm())
        assert moved <= bound if bound else moved > 10


def test_after_step_and_callbacks_run_in_order():
    net, x, y, _ = _problem()
    seen = []
    loop = _loop(net, 3)
    loop.run(lambda s: ((net(x) - y).pow(2).mean(), {}), after_step=lambda: seen.append("a"),
             callbacks=[lambda k: seen.append(("cb", k))], on_step=lambda k: seen.append(k))
    assert seen == ["a", ("cb", 1), 1, "a", ("cb", 2), 2, "a", ("cb", 3), 3]


class Killed(Exception):
    pass


def _train(path, kill_at=None, fp="run-a"):
    """20 steps with random mini-batches (global torch RNG), checkpoint every 5; optionally
    killed after step ``kill_at``.  Returns (weights, loop)."""
    net, x, y, _ = _problem()
    loop = _loop(net, 20, checkpoint_path=path, checkpoint_every=5, fingerprint=fp)
    loop.extra["seen"] = []
    loop.resume()

    def loss(step):
        rows = torch.randint(0, len(x), (32,))
        loop.extra["seen"].append(step)
        return (net(x[rows]) - y[rows]).pow(2).mean(), {"mse": 0.0}

    def kill(k):
        if k == kill_at:
            raise Killed

    try:
        loop.run(loss, on_step=kill)
    except Killed:
        return None, loop
    return net.weight.detach().clone(), loop


def test_a_killed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    ref, ref_loop = _train(tmp_path / "ref.pt")
    _, _ = _train(tmp_path / "run.pt", kill_at=12)  # the step-10 checkpoint survives
    assert load_checkpoint(tmp_path / "run.pt")["step"] == 10
    resumed, loop = _train(tmp_path / "run.pt")
    assert loop.resumed_from == 10
    torch.testing.assert_close(resumed, ref, rtol=0, atol=0)
    assert loop.losses == ref_loop.losses  # every step's loss, kept across the resume
    assert loop.extra["seen"] == list(range(20))  # the caller's state came back with it
    assert load_checkpoint(tmp_path / "run.pt")["step"] == 20  # the last state is saved


def test_a_checkpoint_of_another_run_is_ignored(tmp_path, caplog):
    _train(tmp_path / "c.pt", kill_at=6, fp="run-a")
    _, loop = _train(tmp_path / "c.pt", fp="run-b")
    assert loop.resumed_from is None
    assert "belongs to another configuration" in caplog.text


def test_fingerprint_and_window_means():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert window_means([1.0, 3.0, 5.0, 7.0, 9.0], 2) == [[2.0, 2.0], [4.0, 6.0], [5.0, 9.0]]


@pytest.mark.parametrize("damage", ["flip", "truncate", "no digest"])
def test_a_damaged_checkpoint_is_set_aside_and_training_heals(tmp_path, caplog, damage):
    from tests.corrupt import flip_byte, truncate

    ref, _ = _train(tmp_path / "ref.pt")
    path = tmp_path / "run.pt"
    _train(path, kill_at=12)  # checkpoints at steps 5 (run.prev.pt) and 10 (run.pt)
    if damage == "flip":
        flip_byte(path)
    elif damage == "truncate":
        truncate(path)
    else:  # killed between writing the checkpoint and its digest
        (tmp_path / "run.pt.sha256").unlink()
    resumed, loop = _train(path)
    assert loop.resumed_from == 5  # the previous good checkpoint
    torch.testing.assert_close(resumed, ref, rtol=0, atol=0)
    assert "run.pt is damaged" in caplog.text and (tmp_path / "run.pt.corrupt").exists()


def test_a_finished_run_with_a_flipped_checkpoint_never_yields_wrong_weights(tmp_path):
    from tests.corrupt import flip_byte

    ref, _ = _train(tmp_path / "ref.pt")
    path = tmp_path / "run.pt"
    _train(path)  # finished: run.pt at step 20, run.prev.pt at step 15
    flip_byte(path)
    flip_byte(tmp_path / "run.prev.pt")
    resumed, loop = _train(path)
    assert loop.resumed_from is None  # both damaged: from scratch
    torch.testing.assert_close(resumed, ref, rtol=0, atol=0)
    assert load_checkpoint(path)["step"] == 20
