"""Study 004's misalignment features read the captions of any captioned dataset: a toy split's
rich or poor captions, a real dataset's first caption per image (cc3m in LaCLIP's CSV layout,
coco2017), and refuse a dataset without captions."""

import numpy as np
import pytest

from cliplens.studies.purity.misalign_jobs import run_purity_features, split_captions
from tests import tiny_models as tm
from tests.core.data.test_cc3m import ROWS, cc3m_folder


@pytest.fixture
def tiny_model(monkeypatch):
    """load_model answers with the toy clip-vit architecture at random weights (tests/tiny_models)."""
    import cliplens.core.models.registry as models

    model = tm.toy_vit()
    asked = []

    def load_model(spec, **kw):
        asked.append(spec)
        return model

    monkeypatch.setattr(models, "load_model", load_model)
    return model, asked


def test_cc3m_captions_enter_the_features_in_csv_order(tmp_path, tiny_model):
    from cliplens.core.data.registry import open_dataset
    from cliplens.core.models.projections import projections_removed

    model, asked = tiny_model
    root = cc3m_folder(tmp_path)
    # four rows over the three images, one caption twice, a non-image row between them
    rows = [(ROWS[2][0], "a dog"), (ROWS[0][0], "a cat, asleep"), (ROWS[1][0], "a dog"),
            ("images/00000/000000002.txt", "side file"), (ROWS[0][0], "the cat again")]
    (root / "train.csv").write_text("image,caption\n"
                                    + "".join(f'{i},"{c}"\n' for i, c in rows))
    want = [c for i, c in rows if not i.endswith(".txt")]
    roots = {"results": str(tmp_path), "resources": str(tmp_path)}
    kw = dict(spec="toy:clip-vit", load={}, dataset="cc3m", split="train", tasks=[],
              roots=roots, batch_size=3)
    run_purity_features(captions="rich", images=100, out_npz=str(tmp_path / "f.npz"), **kw)
    f = np.load(tmp_path / "f.npz")
    assert [str(t) for t in f["texts"][f["caption_index"]]] == want
    assert sorted(f["texts"].tolist()) == sorted(set(want)) and len(f["texts"]) == 3
    assert f["caption_index"][0] == f["caption_index"][2]  # "a dog" twice: one text
    assert f["image"].shape[0] == len(f["caption_index"]) == 4
    assert f["text"].shape[0] == 3 and str(f["model"]) == "toy:clip-vit"
    # the image features are those of the CSV's images, in its order
    ds = open_dataset("cc3m", "train", **roots)
    with projections_removed(model):
        direct = model.encode_image(model.preprocess(ds.images(0, 4))).detach().numpy()
    np.testing.assert_allclose(f["image"], direct, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(f["image"][1], f["image"][3], rtol=1e-5, atol=1e-6)  # same image
    assert not np.allclose(f["image"][0], f["image"][1], atol=1e-3)
    # the first images only
    run_purity_features(captions="rich", images=2, out_npz=str(tmp_path / "g.npz"), **kw)
    g = np.load(tmp_path / "g.npz")
    assert [str(t) for t in g["texts"][g["caption_index"]]] == want[:2]
    # a real dataset has one kind of caption: poor is refused before a model is loaded
    asked.clear()
    with pytest.raises(ValueError, match="cc3m has one kind of caption.*captions to rich"):
        run_purity_features(captions="poor", images=2, out_npz=str(tmp_path / "h.npz"), **kw)
    assert not asked and not (tmp_path / "h.npz").exists()


def test_split_captions_of_each_kind_of_dataset(tmp_path, toy_cfg):
    from cliplens.core.data.toy import ToyDataset, read_split, write_toy_dataset
    from cliplens.core.toy import world

    path = tmp_path / "toy.h5"
    write_toy_dataset(path, world.generate("toy", toy_cfg, splits=["test"]), {"dataset": "toy"})
    toy = ToyDataset(path, "test")
    whole = read_split(path, "test", keys=())
    for which in ("rich", "poor"):
        assert split_captions(toy, "test", 5, which) == list(whole[f"captions_{which}"][:5])
    assert split_captions(toy, "test", 5, "rich") != split_captions(toy, "test", 5, "poor")
    with pytest.raises(ValueError, match="rich or poor"):
        split_captions(toy, "test", 5, "medium")

    coco = tm.ArrayDataset(tm.random_images(3), name="coco2017")
    coco.captions = [["first", "second"], ["only"], "a str"]
    assert split_captions(coco, "val", 3, "rich") == ["first", "only", "a str"]
    assert split_captions(coco, "val", 1, "rich") == ["first"]
    coco.captions[1] = []
    with pytest.raises(ValueError, match="coco2017/val: image 1 has no caption"):
        split_captions(coco, "val", 3, "rich")

    plain = tm.ArrayDataset(tm.random_images(3), name="cifar10")
    with pytest.raises(ValueError, match=r"cifar10/test has no captions: purity\.misalign needs "
                                         r"a captioned dataset \(a toy one, coco2017, cc3m\)"):
        split_captions(plain, "test", 3, "rich")
