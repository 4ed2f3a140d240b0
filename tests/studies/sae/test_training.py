"""SAE training: batches are a function of the step (block-shuffled, identical streamed or in
memory), a killed run resumes to the same weights, and a TopK SAE finds a planted dictionary."""

import numpy as np
import torch

from cliplens.studies.sae.training import BlockOrder, MemoryRows, StreamedRows, train_sae
from cliplens.studies.sae.variants import TopK


def test_each_epoch_visits_every_row_once_block_by_block():
    order = BlockOrder(103, 10, seed=3)
    for e in range(2):
        rows = order.epoch(e)
        assert sorted(rows.tolist()) == list(range(103))
        blocks = rows // 10
        runs = [b for i, b in enumerate(blocks) if i == 0 or blocks[i - 1] != b]
        assert sorted(runs) == list(range(11))          # each block visited in one run
    assert not np.array_equal(order.epoch(0), order.epoch(1))
    # steps run on across epochs without a gap
    batches = np.concatenate([order.rows(s, 16) for s in range(12)])
    np.testing.assert_array_equal(batches, np.concatenate([order.epoch(0), order.epoch(1)])[:192])


class FakeCache:
    """What StreamedRows reads: ``array(name).shape`` and ``read(name, rows)``."""

    def __init__(self, a):
        self.a = a

    def array(self, name):
        return self.a

    def read(self, name, rows):
        return self.a[rows]


def test_streamed_rows_equal_memory_rows_and_read_each_block_once_per_epoch():
    a = np.random.default_rng(0).standard_normal((95, 4)).astype(np.float32)
    order = BlockOrder(95, 8, seed=1)
    mem, streamed = MemoryRows(a), StreamedRows(FakeCache(a), "x", 8)
    for s in range(95 // 5):                             # one epoch in batches of 5
        rows = order.rows(s, 5)
        np.testing.assert_array_equal(streamed(rows), mem(rows))
    assert streamed.reads == 12                          # ceil(95 / 8) blocks, each once


def planted(n=3000, d=16, atoms=24, k=2, seed=0):
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((atoms, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    x = np.zeros((n, d))
    for i in range(n):
        pick = rng.choice(atoms, k, replace=False)
        x[i] = rng.uniform(0.5, 1.5, k) @ D[pick]
    return x.astype(np.float32), D


def test_topk_recovers_a_planted_dictionary():
    x, D = planted()
    sae = TopK(16, 48, k=2, seed=0)
    loop = train_sae(sae, MemoryRows(x), batch_size=64, epochs=8, lr=3e-3, seed=0,
                     block_rows=256, progress=False)
    sae.eval()
    with torch.no_grad():
        xh, _ = sae(torch.as_tensor(x))
    r2 = 1 - ((xh.numpy() - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    cos = np.abs(D @ sae.W_dec.detach().numpy().T).max(1)     # best match of each true atom
    print(f"R2 {r2:.3f}; atoms matched at cos > 0.95: {(cos > 0.95).sum()} of {len(D)}; "
          f"{len(loop.losses)} steps")
    assert r2 > 0.9 and (cos > 0.95).sum() >= 20


def test_a_killed_run_resumes_to_the_same_weights_streamed_or_not(tmp_path):
    x, _ = planted(n=600)

    def run(rows, ckpt=None, kill_at=None):
        sae = TopK(16, 32, k=3, dead_after=200, seed=1)

        def kill(step):
            if step == kill_at:
                raise KeyboardInterrupt

        try:
            train_sae(sae, rows, batch_size=50, epochs=2, lr=1e-3, seed=5, block_rows=64,
                      checkpoint_path=ckpt, checkpoint_every=4, fingerprint="t",
                      progress=False, on_step=kill)
        except KeyboardInterrupt:
            return None
        return sae.state_dict()

    whole = run(MemoryRows(x))
    ckpt = tmp_path / "last.pt"
    assert run(StreamedRows(FakeCache(x), "x", 64), ckpt, kill_at=10) is None
    resumed = run(StreamedRows(FakeCache(x), "x", 64), ckpt)
    for k in whole:
        torch.testing.assert_close(resumed[k], whole[k], rtol=0, atol=0)
