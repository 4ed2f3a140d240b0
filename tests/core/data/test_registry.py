"""The dataset catalog, the dataset registry and the zero-shot task registry (no network)."""

import json
import pickle
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from cliplens.core.data import readers, registry, tasks
from cliplens.core.data.archives import check_manual
from cliplens.core.data.catalog import ManualDatasetError, catalog_files, load_catalog
from cliplens.core.data.toy import write_toy_dataset
from cliplens.core.toy import world
from tests.fake_data import pascal_context

CATALOG = load_catalog()["datasets"]
HEX = {"sha256": re.compile(r"[0-9a-f]{64}"), "md5": re.compile(r"[0-9a-f]{32}")}


# ---------------------------------------------------------------------------------------------
# Catalog


@pytest.mark.parametrize("name", [n for n, e in CATALOG.items() if not e.get("manual")])
def test_downloadable_entries_have_url_checksum_and_source(name):
    entry = CATALOG[name]
    assert entry["files"] and entry["check"]
    for f in [*entry["files"], *entry.get("nested", [])]:
        label = f.get("name", f.get("archive"))
        if "name" in f:
            assert re.match(r"https?://", f["url"]), label
            assert all(re.match(r"https?://", m) for m in f.get("mirrors", []))
            assert "/" not in f["name"] and f.get("extract_to") is not None
        assert len(str(f.get("source", "")).strip()) > 10, f"{label}: no source"
        for algo, rx in HEX.items():
            if f.get(algo) is not None:
                assert rx.fullmatch(f[algo]), (label, algo)
        assert f.get("size") is None or (isinstance(f["size"], int) and f["size"] > 0)
        if not f.get("sha256"):
            # an MD5 alone, or no digest at all, must say why
            assert len(str(f.get("checksum_note", ""))) > 20, f"{label}: no SHA-256 and no reason"
            if not f.get("md5"):
                assert "UNVERIFIED" in f["checksum_note"]


def test_catalog_file_names_are_unique_and_split_files_exist():
    files = catalog_files()  # raises on duplicates
    assert len(files) == sum(len(e.get("files", [])) for e in CATALOG.values())
    for name, entry in CATALOG.items():
        for split, names in entry.get("split_files", {}).items():
            assert set(names) <= {f["name"] for f in entry["files"]}, (name, split)


def test_issue_datasets_are_all_in_the_catalog():
    auto = {"coco2017", "cifar10", "cifar100", "food101", "stl10", "pets", "dtd", "eurosat",
            "caltech101", "waterbirds"}
    manual = {"imagenet", "imagenet-seg", "pascal-context", "stanford-cars"}
    assert auto <= {n for n, e in CATALOG.items() if not e.get("manual")}
    assert manual <= {n for n, e in CATALOG.items() if e.get("manual")}
    # every SHA-256 the issue asks for, except the two documented exceptions
    no_sha = {f["name"] for f in catalog_files().values() if not f.get("sha256")}
    assert no_sha == {"caltech-101.zip", "waterbird_complete95_forest2water2.tar.gz"}


@pytest.mark.parametrize("name", [n for n, e in CATALOG.items() if e.get("manual")])
def test_check_manual_on_an_empty_folder_raises_with_instructions(tmp_path, name):
    root = tmp_path / name
    with pytest.raises(ManualDatasetError) as err:
        check_manual(name, root)
    msg = str(err.value)
    first_line = CATALOG[name]["instructions"].strip().splitlines()[0]
    assert first_line in msg and str(root.resolve()) in msg and "Missing:" in msg
    assert "{root}" not in msg
    # filling in the first layout makes it pass
    for rel in CATALOG[name]["layout"][0]:
        p = root / rel
        if rel.endswith("/"):
            p.mkdir(parents=True, exist_ok=True)
            (p / "x.jpg").write_bytes(b"x")
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")
    assert check_manual(name, root) == root


def test_check_manual_accepts_an_alternative_layout_and_rejects_empty_files(tmp_path):
    root = tmp_path / "imagenet"
    (root / "val" / "n01440764").mkdir(parents=True)
    (root / "meta.bin").write_bytes(b"")  # empty: not good enough
    with pytest.raises(ManualDatasetError, match="meta.bin"):
        check_manual("imagenet", root)
    (root / "meta.bin").write_bytes(b"m")
    (root / "val" / "n01440764" / "a.JPEG").write_bytes(b"j")
    assert check_manual("imagenet", root) == root


def test_manual_dataset_open_fails_with_instructions(tmp_path):
    with pytest.raises(ManualDatasetError, match="image-net.org"):
        registry.open_dataset("imagenet", "val", results=tmp_path, resources=tmp_path)


def test_every_catalog_dataset_has_a_loader_or_says_where_it_is_read():
    for name, entry in CATALOG.items():
        assert name in readers.LOADERS or entry.get("loader") == "external", name


# ---------------------------------------------------------------------------------------------
# Tasks and templates


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_every_task_resolves_its_templates(name):
    task = tasks.get_task(name)
    templates = task.resolved_templates()
    assert templates and all(t.count("{}") == 1 for t in templates)
    assert all(t.format("zebra").count("zebra") == 1 for t in templates)
    assert task.dataset in registry.known_datasets()


def test_template_specs():
    assert tasks.resolve_templates("simple") == ("a photo of a {}.",)
    oa = tasks.resolve_templates("openai_imagenet")
    meta = readers.open_clip_metadata()  # open_clip's own zero_shot_metadata.py
    assert len(oa) == 80 and oa == tuple(f("{}") for f in meta.OPENAI_IMAGENET_TEMPLATES)
    assert oa[0] == "a bad photo of a {}." and len(meta.IMAGENET_CLASSNAMES) == 1000
    assert len(tasks.resolve_templates("simple_imagenet")) == 7
    assert tasks.resolve_templates("toy:colour") == world.ZEROSHOT_TEMPLATES["colour"]
    assert tasks.resolve_templates("toy", "shape") == world.ZEROSHOT_TEMPLATES["shape"]
    assert tasks.resolve_templates(["a {} b"]) == ("a {} b",)
    for bad in (["no slot"], ["{} and {}"], ["{x} {}"], [], "toy:weight", "nonsense"):
        with pytest.raises(ValueError):
            tasks.resolve_templates(bad)
    assert len(tasks.get_task("imagenet").resolved_templates()) == 80
    assert tasks.get_task("cifar10").resolved_templates("openai_imagenet") == oa


def test_classname_cleaning():
    assert readers.clean_classname("apple_pie") == "apple pie"
    assert readers.clean_classname("AnnualCrop") == "annual crop"
    assert readers.clean_classname("American Bulldog") == "American Bulldog"
    assert readers.clean_classname("airplane") == "airplane"


@pytest.fixture(scope="module")
def toy_results(tmp_path_factory, toy_cfg):
    results = tmp_path_factory.mktemp("results")
    for name in ("toy", "toy-spurious"):
        splits = world.generate(name, toy_cfg, splits=["test"])
        write_toy_dataset(results / "data" / "toy" / f"{name}.h5", splits, {"dataset": name})
    return results


@pytest.mark.parametrize("factor", [*world.FACTORS, "object"])
def test_toy_tasks_line_up_labels_and_classnames(toy_results, factor, tmp_path):
    task, ds, names, templates = tasks.open_task(f"toy-{factor}", results=toy_results,
                                                    resources=tmp_path)
    assert (task.dataset, task.split, task.label_key) == ("toy", "test", factor)
    assert names == world.classnames(factor)
    assert templates == world.ZEROSHOT_TEMPLATES[factor]
    assert len(ds.labels) == len(ds) == 48 and ds.labels.min() >= 0
    assert ds.labels.max() < len(names)
    fl = ds.factor_labels
    for i in range(len(ds)):  # the class name of each label is the image's factor value
        if factor == "object":
            want = f"{world.COLOURS[fl['colour'][i]]} {world.SHAPES[fl['shape'][i]]}"
        else:
            want = world.PHRASES[factor][world.FACTORS[factor][fl[factor][i]]][0]
        assert names[ds.labels[i]] == want
    assert ds.image(0).size == (ds.array(0, 1).shape[2], ds.array(0, 1).shape[1])


def test_toy_spurious_task_uses_the_configured_classes(toy_results, toy_cfg, tmp_path):
    task, ds, names, _ = tasks.open_task("toy-spurious", results=toy_results,
                                            resources=tmp_path)
    assert names == list(toy_cfg.spurious.classes)
    shapes = np.asarray(world.SHAPES)[ds.factor_labels["shape"]]
    assert np.array_equal(shapes, np.asarray(names)[ds.labels])


def test_missing_toy_file_names_the_target(tmp_path):
    with pytest.raises(registry.DatasetNotReadyError, match=r"snakemake .*toy\.h5"):
        registry.open_dataset("toy", "test", results=tmp_path, resources=tmp_path)


def test_unknown_names_are_listed():
    with pytest.raises(KeyError, match="cifar10"):
        tasks.get_task("cifar11")
    with pytest.raises(KeyError, match="cifar10"):
        registry.open_dataset("cifar11", "test", results=".", resources=".")


# ---------------------------------------------------------------------------------------------
# Real-dataset loaders on tiny fake layouts


def _jpeg(path: Path, rgb, size=(8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


def test_food101_opens_with_readable_classnames(tmp_path):
    base = tmp_path / "datasets" / "food101" / "food-101"
    meta = {"apple_pie": ["apple_pie/1", "apple_pie/2"], "baby_back_ribs": ["baby_back_ribs/7"]}
    (base / "meta").mkdir(parents=True)
    (base / "meta" / "test.json").write_text(json.dumps(meta))
    for cls, items in meta.items():
        for k, item in enumerate(items):
            _jpeg(base / "images" / f"{item}.jpg", (10 * k, 200, 0))
    ds = registry.open_dataset("food101", "test", results=tmp_path, resources=tmp_path)
    assert ds.classnames == ["apple pie", "baby back ribs"]
    assert ds.labels.tolist() == [0, 0, 1] and len(ds) == 3
    assert ds.image(2).mode == "RGB" and ds.image(2).size == (8, 6)
    task, ds2, names, templates = tasks.open_task("food101", results=tmp_path,
                                                     resources=tmp_path)
    assert names == ["apple pie", "baby back ribs"] and templates == ("a photo of a {}.",)


def test_cifar10_opens_from_pickles(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # fake files
    folder = tmp_path / "datasets" / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names}, fh)
    batches = {}
    for b in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, size=(10, 3072), dtype=np.uint8)
        labels = list(range(10))[::-1] if b == "test_batch" else list(range(10))
        batches[b] = (data, labels)
        with open(folder / b, "wb") as fh:
            pickle.dump({"data": data, "labels": labels}, fh)
    ds = registry.open_dataset("cifar10", "test", results=tmp_path, resources=tmp_path)
    assert len(ds) == 10 and ds.classnames == names and ds.labels.tolist() == list(range(10))[::-1]
    want = batches["test_batch"][0][3].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(ds.image(3)), want)
    assert len(registry.open_dataset("cifar10", "train", results=tmp_path,
                                     resources=tmp_path)) == 50


def test_eurosat_has_a_deterministic_stratified_split(tmp_path):
    base = tmp_path / "datasets" / "eurosat" / "eurosat" / "2750"
    for cls in ("AnnualCrop", "SeaLake"):
        for k in range(10):
            _jpeg(base / cls / f"{cls}_{k}.jpg", (k, 0, 0))
    kw = dict(results=tmp_path, resources=tmp_path)
    test = registry.open_dataset("eurosat", "test", **kw)
    train = registry.open_dataset("eurosat", "train", **kw)
    assert test.classnames == ["annual crop", "sea or lake"]
    assert len(test) == 4 and len(train) == 16 and test.labels.tolist() == [0, 0, 1, 1]
    assert len(registry.open_dataset("eurosat", "all", **kw)) == 20


def test_missing_real_dataset_names_the_ready_target(tmp_path):
    with pytest.raises(registry.DatasetNotReadyError, match=r"snakemake .*dtd/\.ready"):
        registry.open_dataset("dtd", "test", results=tmp_path, resources=tmp_path)


def test_coco_captions_and_waterbirds(tmp_path):
    coco = tmp_path / "datasets" / "coco2017"
    (coco / "annotations").mkdir(parents=True)
    ann = {"images": [{"id": 9, "file_name": "000000000009.jpg"},
                      {"id": 3, "file_name": "000000000003.jpg"}],
           "annotations": [{"id": 1, "image_id": 9, "caption": "a plate "},
                           {"id": 2, "image_id": 3, "caption": "a cat"},
                           {"id": 3, "image_id": 9, "caption": "food"}]}
    (coco / "annotations" / "captions_val2017.json").write_text(json.dumps(ann))
    _jpeg(coco / "val2017" / "000000000003.jpg", (1, 2, 3))
    _jpeg(coco / "val2017" / "000000000009.jpg", (9, 9, 9))
    ds = registry.open_dataset("coco2017", "val", results=tmp_path, resources=tmp_path)
    assert ds.image_ids.tolist() == [3, 9] and ds.captions == [["a cat"], ["a plate", "food"]]
    assert ds.labels is None and np.asarray(ds.image(1))[0, 0].tolist() == [9, 9, 9]

    wb = tmp_path / "datasets" / "waterbirds" / "waterbird_complete95_forest2water2"
    wb.mkdir(parents=True)
    rows = [(0, "a/1.jpg", 1, 2, 0), (1, "a/2.jpg", 0, 2, 1), (2, "b/3.jpg", 1, 0, 1)]
    (wb / "metadata.csv").write_text(
        "img_id,img_filename,y,split,place,place_filename\n"
        + "".join(f"{i},{f},{y},{s},{p},x.jpg\n" for i, f, y, s, p in rows))
    for _, f, *_ in rows:
        _jpeg(wb / f, (0, 0, 0))
    test = registry.open_dataset("waterbirds", "test", results=tmp_path, resources=tmp_path)
    assert test.labels.tolist() == [1, 0] and test.groups.tolist() == [2, 1]
    assert [test.group_names[g] for g in test.groups] == ["waterbird on land",
                                                          "landbird on water"]


def test_imagenet_segmentation_reads_matlab_references(tmp_path):
    root = tmp_path / "datasets" / "imagenet-seg"
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8) for _ in range(2)]
    masks = [rng.random((5, 7)) > 0.5 for _ in range(2)]
    with h5py.File(root / "gtsegs_ijcv.mat", "w") as h5:  # MATLAB v7.3 layout: column-major
        refs = h5py.ref_dtype
        img_refs = h5.create_dataset("value/img", (2, 1), dtype=refs)
        gt_refs = h5.create_dataset("value/gt", (2, 1), dtype=refs)
        for i in range(2):
            h5[f"#refs#/img{i}"] = imgs[i].transpose(2, 1, 0)
            h5[f"#refs#/mask{i}"] = masks[i].T.astype(np.uint8)
            cell = h5.create_dataset(f"#refs#/cell{i}", (1, 1), dtype=refs)
            cell[0, 0] = h5[f"#refs#/mask{i}"].ref
            img_refs[i, 0] = h5[f"#refs#/img{i}"].ref
            gt_refs[i, 0] = cell.ref
    (root / ".ready").write_text("{}")
    ds = registry.open_dataset("imagenet-seg", "test", results=tmp_path, resources=tmp_path)
    assert len(ds) == 2
    assert np.array_equal(np.asarray(ds.image(1)), imgs[1])
    assert np.array_equal(ds.mask(1), masks[1])


def test_dataset_targets_for_workflow_rules():
    kw = dict(results="R", resources="RES")
    assert registry.dataset_targets("toy-spurious", "test", **kw) == ["R/data/toy/toy-spurious.h5"]
    assert registry.dataset_targets("cifar10", "test", **kw) == ["RES/datasets/cifar10/.ready"]
    assert registry.dataset_targets("imagenet", "val", **kw) == ["RES/datasets/imagenet/.ready"]
    assert registry.dataset_targets("coco2017", "val", **kw) == [
        "RES/datasets/coco2017/.extracted/val2017.zip",
        "RES/datasets/coco2017/.extracted/annotations_trainval2017.zip"]
    assert registry.dataset_targets("coco2017", None, **kw) == ["RES/datasets/coco2017/.ready"]
    with pytest.raises(KeyError, match="cifar10"):
        registry.dataset_targets("cifar11", None, **kw)
    rx = re.compile(registry.wildcard_alternatives(["a.zip", "b-c.tar.gz"]))
    assert rx.fullmatch("b-c.tar.gz") and not rx.fullmatch("aXzip")


def test_pascal_context_reads_59_class_label_maps(tmp_path):
    """Label 0 (none of the 59) becomes the ignored 255 and 1..59 become 0..58; a missing
    layout names what is missing and where to get it."""
    with pytest.raises(Exception, match="SegmentationClassContext"):
        registry.open_dataset("pascal-context", "val", results=tmp_path, resources=tmp_path)
    voc, raws = pascal_context(tmp_path, ["2008_000002", "2008_000007"],
                                np.random.default_rng(0))
    ds = registry.open_dataset("pascal-context", "val", results=tmp_path, resources=tmp_path)
    assert len(ds) == 2 and len(ds.classnames) == 59 and ds.labels is None
    assert ds.image(1).size == (30, 20)
    m = ds.class_mask(1)
    assert m.dtype == np.int64 and (m[raws[1] == 0] == 255).all()
    assert (m[raws[1] > 0] == raws[1][raws[1] > 0].astype(np.int64) - 1).all()
    with pytest.raises(ValueError, match="splits"):
        registry.open_dataset("pascal-context", "test", results=tmp_path, resources=tmp_path)
