"""Caption misalignment by TF-IDF partners and fine-tuning the projections on cached features."""

import numpy as np
import pytest
import torch

from cliplens.studies.purity.misalign import contrastive_loss, finetune_projections, misalign

TEXTS = ["a red circle on the left", "a red circle on the right", "a blue star at the top",
         "a blue star at the bottom", "a green square"]


def test_misalign_swaps_pairs_of_similar_captions_up_to_the_fraction():
    texts = TEXTS[:4]  # two pairs of captions that share words
    idx = np.tile(np.arange(4), 75)  # 300 captions, 75 of each
    new, moved, _ = misalign(idx, texts, 0.3, seed=0)
    # 90 rows paired (45 swaps), each swap between two different captions
    assert len(moved) == 90 and (new != idx).sum() == 90
    assert (np.bincount(new, minlength=4) == np.bincount(idx, minlength=4)).all()
    # rows sharing words swap: every moved caption came from a caption with a common word
    words = [set(t.split()) - {"a", "on", "the", "at", "in"} for t in texts]
    assert all(words[new[r]] & words[idx[r]] for r in moved)
    same, none, _ = misalign(idx, texts, 0.0, seed=0)
    assert len(none) == 0 and (same == idx).all()
    again, _, _ = misalign(idx, texts, 0.3, seed=0)
    assert (again == new).all()  # seeded
    most, moved8, _ = misalign(idx, texts, 0.8, seed=1)
    assert len(moved8) > len(moved)
    with pytest.raises(ValueError, match="Cs = 1.5 is outside"):
        misalign(idx, texts, 1.5, seed=0)


def test_contrastive_loss_is_low_for_matched_pairs():
    e = torch.eye(4) * 3
    assert contrastive_loss(e, e, 10.0) < 0.01
    assert contrastive_loss(e, e.flip(0), 10.0) > 5


def test_finetuning_only_moves_the_projections_towards_alignment(tmp_path):
    rng = np.random.default_rng(0)
    n, dv, dt, e = 64, 6, 5, 4
    image = rng.normal(size=(n, dv)).astype(np.float32)
    text = rng.normal(size=(n, dt)).astype(np.float32)  # caption n describes image n
    wi, wt = rng.normal(size=(dv, e)), rng.normal(size=(dt, e))
    kw = dict(steps=60, batch_size=32, lr=0.05, seed=0, progress=False)
    pi, pt, loop = finetune_projections(image, text, np.arange(n), wi, wt, 10.0, init="trained",
                                        **kw)
    assert pi.shape == wi.shape and not np.allclose(pi, wi)
    assert np.mean(loop.losses[-10:]) < loop.losses[0]
    # zero steps from the trained weights give them back; random init differs
    p0, _, _ = finetune_projections(image, text, np.arange(n), wi, wt, 10.0, init="trained",
                                    **{**kw, "steps": 0})
    np.testing.assert_allclose(p0, wi, rtol=1e-6)
    r0, _, _ = finetune_projections(image, text, np.arange(n), wi, wt, 10.0, init="random",
                                    **{**kw, "steps": 0})
    assert not np.allclose(r0, wi)
    # a killed run resumes to the same weights
    ck = tmp_path / "last.pt"

    def kill(step):
        if step == 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune_projections(image, text, np.arange(n), wi, wt, 10.0, init="trained", **kw,
                             checkpoint_path=ck, checkpoint_every=10, fingerprint="f", on_step=kill)
    pr, tr, _ = finetune_projections(image, text, np.arange(n), wi, wt, 10.0, init="trained",
                                     **kw, checkpoint_path=ck, checkpoint_every=10,
                                     fingerprint="f")
    np.testing.assert_allclose(pr, pi, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tr, pt, rtol=1e-5, atol=1e-6)
