"""The CC3M reader (LaCLIP's CSV layout: ``{split}.csv`` rows ``image,caption``, image paths
relative to the dataset folder) opened through the registry, as the workflow opens it."""

import re

import numpy as np
import pytest
from PIL import Image

from cliplens.core.data import readers, registry
from cliplens.core.data.catalog import ManualDatasetError, load_catalog

#: (image path relative to the dataset folder, caption, colour of the image written there)
ROWS = [("images/00000/000000002.png", "a red bus, parked on a street", (200, 10, 10)),
        ("images/00000/000000000.PNG", 'a "quoted" caption', (10, 200, 10)),
        ("images/00001/000000007.png", "blue sky\nover a field", (10, 10, 200))]


def cc3m_folder(resources, split="train", header=True, extra=""):
    """A tiny CC3M folder under ``{resources}/datasets/cc3m``: three 8 x 6 PNGs of one colour
    each and ``{split}.csv`` listing them (in ROWS' order, which is not the files' order) among
    rows that are not images (img2dataset's .txt/.json side files, a failed download), written
    with quoting by hand.  ``extra`` is appended as is.  Returns the folder."""
    root = resources / "datasets" / "cc3m"
    for rel, _, rgb in ROWS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), rgb).save(root / rel, format="PNG")
    lines = ["image,caption"] if header else []
    lines += [
        "images/00000/000000002.png,\"a red bus, parked on a street\"",
        "images/00000/000000002.txt,a red bus",
        "images/00000/000000000.PNG,\"a \"\"quoted\"\" caption\"",
        "images/00000/000000000.json,{}",
        "",
        "images/00001/000000007.png,\"blue sky\nover a field\"",
        "images/00001/000000009.jpg.part,a download that failed",
    ]
    (root / f"{split}.csv").write_text("\n".join(lines) + "\n" + extra)
    return root


def open_cc3m(tmp_path, split="train"):
    return registry.open_dataset("cc3m", split, results=tmp_path, resources=tmp_path)


@pytest.mark.parametrize("header", [True, False])
def test_images_captions_and_order_follow_the_csv(tmp_path, header):
    cc3m_folder(tmp_path, header=header)
    ds = open_cc3m(tmp_path)
    assert isinstance(ds, readers.Cc3mCaptions)
    assert (ds.name, ds.split, len(ds)) == ("cc3m", "train", 3)
    assert ds.files == [rel for rel, _, _ in ROWS]  # the CSV's order; non-image rows dropped
    assert ds.captions == [[cap] for _, cap, _ in ROWS]  # one-element lists, as COCO's
    assert ds.labels is None and ds.classnames is None
    for i, (_, _, rgb) in enumerate(ROWS):
        im = ds.image(i)
        assert im.mode == "RGB" and im.size == (8, 6)
        assert np.asarray(im)[3, 4].tolist() == list(rgb)
    assert [np.asarray(im)[0, 0].tolist() for im in ds.images(1, 3)] == [list(ROWS[1][2]),
                                                                           list(ROWS[2][2])]
    assert ds.describe() == {"dataset": "cc3m", "split": "train", "n": 3}


def test_a_header_may_name_the_columns_in_any_order(tmp_path):
    root = cc3m_folder(tmp_path)
    (root / "train.csv").write_text("\ufeffCaption,extra,filepath\n"  # with a byte-order mark
                                    f"sky,x,{ROWS[2][0]}\n"
                                    f" a bus ,y,{ROWS[0][0]}\n")
    ds = open_cc3m(tmp_path)
    assert ds.files == [ROWS[2][0], ROWS[0][0]] and ds.captions == [["sky"], ["a bus"]]


def test_without_a_header_the_first_row_is_data(tmp_path):
    """A first row that names an image is data even when its caption reads like a header."""
    root = cc3m_folder(tmp_path)
    (root / "train.csv").write_text(f"{ROWS[1][0]},caption\nimage,caption\n{ROWS[0][0]},bus\n")
    ds = open_cc3m(tmp_path)
    assert ds.files == [ROWS[1][0], ROWS[0][0]] and ds.captions == [["caption"], ["bus"]]


def test_val_split_reads_val_csv(tmp_path):
    cc3m_folder(tmp_path, split="val")
    ds = open_cc3m(tmp_path, "val")
    assert ds.split == "val" and len(ds) == 3
    with pytest.raises(ValueError, match=r"train\.csv does not exist.*val\.csv"):
        open_cc3m(tmp_path, "train")  # the layout holds (val.csv), the train split does not
    with pytest.raises(ValueError, match="cc3m has splits"):
        open_cc3m(tmp_path, "test")


def test_errors_name_the_file_and_the_line(tmp_path):
    root = cc3m_folder(tmp_path)
    csv = root / "train.csv"
    at = re.escape(str(csv))
    # the base CSV ends after line 9 (header, 5 rows, a blank line, a caption over two lines)
    cc3m_folder(tmp_path, extra="images/00000/000000002.png\n")
    with pytest.raises(ValueError, match=rf"{at}, line 10: 1 column.*image,caption"):
        open_cc3m(tmp_path)
    cc3m_folder(tmp_path, extra="images/00000/000000002.png,  \n")
    with pytest.raises(ValueError, match=rf"{at}, line 10: .*000000002\.png.* empty caption"):
        open_cc3m(tmp_path)
    csv.write_text("image,caption\nimages/a.txt,text only\n")
    with pytest.raises(ValueError, match=rf"{at} lists no images"):
        open_cc3m(tmp_path)
    csv.unlink()
    (root / "val.csv").write_text("x")  # the layout is complete, the train CSV is not there
    with pytest.raises(ValueError, match=rf"{at} does not exist"):
        open_cc3m(tmp_path)


def test_missing_folder_fails_with_the_catalog_instructions(tmp_path):
    with pytest.raises(ManualDatasetError) as err:
        open_cc3m(tmp_path)
    msg = str(err.value)
    assert "ConceptualCaptions/download" in msg and "img2dataset" in msg
    assert str((tmp_path / "datasets" / "cc3m" / "train.csv").resolve()) in msg


def test_catalog_entry_and_workflow_targets():
    entry = load_catalog()["datasets"]["cc3m"]
    assert entry["manual"] and "files" not in entry
    assert all("images/" in alt for alt in entry["layout"])
    assert readers.SPLITS["cc3m"] == ("train", "val") and "cc3m" in readers.LOADERS
    assert registry.dataset_targets("cc3m", "train", results="R", resources="RES") == [
        "RES/datasets/cc3m/.ready"]
