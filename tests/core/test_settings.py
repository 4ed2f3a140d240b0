"""Typed settings: the schema is the one source of keys and defaults; every section is a frozen
dataclass built and validated once; a bad key or value is an error naming it."""

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import yaml

from cliplens.core import settings as st
from cliplens.core.config import ConfigError, deep_merge, load_schema
from cliplens.core.toy.models import ToyConfigError

ROOT = Path(__file__).resolve().parents[2]


def sections():
    """Every Section subclass defined in cliplens.core.settings."""
    return [c for c in vars(st).values()
            if isinstance(c, type) and issubclass(c, st.Section) and c is not st.Section]


def record(node):
    """An object with its own named keys (a section), not a table of like values such as
    ``inversion.operators.tasks`` (task -> operator kinds), which stays a mapping."""
    props = node.get("properties") if node.get("type") == "object" else None
    return bool(props) and len({json.dumps(v, sort_keys=True) for v in props.values()}) > 1


def config(*extra):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    for path in extra:
        cfg = deep_merge(cfg, yaml.safe_load((ROOT / path).read_text()))
    return cfg


@pytest.mark.parametrize("cls", sections(), ids=lambda c: c.__name__)
def test_each_section_mirrors_its_schema_and_holds_no_default(cls):
    schema = st.schema_at(cls.SCHEMA)
    fields = dataclasses.fields(cls)
    assert {f.name for f in fields} == set(schema["properties"]), cls.SCHEMA
    for f in fields:
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, \
            f"{cls.__name__}.{f.name} has a default: defaults live in the schema only"
        # a nested object of the schema is a nested section (or a mapping of them)
        sub = schema["properties"][f.name]
        if record(sub):
            t = typing.get_type_hints(cls)[f.name]
            assert isinstance(t, type) and issubclass(t, st.Section), (cls.__name__, f.name)
            assert t.SCHEMA == f"{cls.SCHEMA}.{f.name}".lstrip(".")


def test_every_schema_section_has_a_class():
    """Each object with properties in the schema (below the top) is some section's SCHEMA."""
    declared = {c.SCHEMA for c in sections()}

    def walk(node, path):
        if record(node):
            assert path in declared, f"no settings class for {path!r}"
            for k, sub in node["properties"].items():
                walk(sub, f"{path}.{k}" if path else k)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.*")

    walk(load_schema(), "")


@pytest.mark.parametrize("extra", [(), ("configs/test.yaml",), ("configs/paper.yaml",)],
                         ids=["default", "test", "paper"])
def test_the_three_configs_build_and_round_trip(extra):
    cfg = config(*extra)
    s = st.load_settings(cfg)  # fills cfg's defaults in place, as Snakemake's config needs
    assert s.to_dict() == cfg
    assert st.Settings.from_dict(s.to_dict()) == s


def test_defaults_come_from_the_schema():
    m = st.ToyModelSettings.from_dict({"library": "open_clip", "family": "clip"})
    vision = load_schema()["properties"]["toy_models"]["additionalProperties"]["properties"][
        "vision"]["properties"]
    assert m.vision.width == vision["width"]["default"]
    assert m.train.batching.kind == "random" and m.image_objective.kind == "none"


def test_settings_are_frozen_and_lists_become_tuples():
    s = st.load_settings(config())
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.device = "cuda"
    assert isinstance(s.zeroshot.models, tuple)
    assert isinstance(s.inversion.reconstructor.channels, tuple)
    assert s.inversion.reconstructor.to_dict()["channels"] == [64, 32, 16, 8]


@pytest.mark.parametrize("cfg, key", [
    ({"inversion": {"train": {"stepz": 3}}}, "inversion.train"),
    ({"heads": {"textspan": {"n_texts": 0}}}, "heads.textspan.n_texts"),
    ({"toy_models": {"m": {"library": "open_clip", "family": "clip", "vision": {"width": "x"}}}},
     "toy_models.m.vision.width"),
    ({"cache": {"dtype": "int8"}}, "cache.dtype"),
    ({"typo": 1}, "<top level>"),
])
def test_a_bad_key_or_value_is_named(cfg, key):
    with pytest.raises(ConfigError) as err:
        st.load_settings(deep_merge(config(), cfg))
    assert f"{key}:" in str(err.value), str(err.value)


def test_a_slice_names_its_own_path():
    with pytest.raises(ConfigError, match=r"inversion\.train: Additional properties .*'stpes'"):
        st.ReconstructorTrain.from_dict({"stpes": 3})
    with pytest.raises(ConfigError, match=r"toy_models\.x\.vision\.heads"):
        st.ToyModelSettings.from_dict({"library": "open_clip", "family": "clip",
                                       "vision": {"heads": 0}}, where="toy_models.x")


def test_cross_key_constraints_fail_when_the_config_is_read():
    """Constraints the schema cannot state fail at planning, naming the key."""
    bad = deep_merge(config(), {"toy_models": {"siglip-32": {"embed_dim": 32}}})
    with pytest.raises(ToyConfigError, match=r"toy_models\.siglip-32\.embed_dim"):
        st.load_settings(bad)
    bad = deep_merge(config(), {"toy": {"spurious": {"classes": ["circle", "circle"]}}})
    with pytest.raises(ConfigError, match=r"toy\.spurious\.classes"):
        st.load_settings(bad)


def test_only_the_settings_a_neighbour_search_uses_reach_its_jobs():
    s = st.load_settings(config("configs/test.yaml")).purity.misalign.neighbours
    assert s.applied() == {"search": "exact"}
    ivf = st.load_settings(deep_merge(config("configs/test.yaml"), {"purity": {"misalign": {
        "neighbours": {"search": "ivf", "probes": 4}}}})).purity.misalign.neighbours
    assert ivf.applied() == {"search": "ivf", "probes": 4}


def test_replace_validates():
    t = st.ReconstructorTrain.from_dict({})
    assert t.replace(steps=7).steps == 7 and t.steps != 7
    with pytest.raises(ConfigError, match="steps"):
        t.replace(steps=0)
    assert st.ReconstructorSettings.from_dict({"channels": (32, 16)}).channels == (32, 16)


def test_batching_alternatives():
    one = st.Batching.from_dict({"kind": "grouped", "share": ["colour", "size"]})
    assert one.alternatives == [["colour", "size"]]
    two = st.Batching.from_dict({"kind": "grouped", "share": [["colour"], ["shape"]]})
    assert two.alternatives == [["colour"], ["shape"]]
    assert st.Batching.from_dict({"kind": "grouped", "share": []}).alternatives == [[]]


def test_settings_from_file_with_overrides():
    s = st.settings_from_file(ROOT / "config.yaml", {"toy": {"seed": 3}})
    assert s.toy.seed == 3 and s == st.load_settings(deep_merge(config(), {"toy": {"seed": 3}}))


# ---- what a config names is checked against what exists, when the workflow plans

REFERENCE_MISTAKES = [
    ({"zeroshot": {"models": ["toy:clip-vt"]}},
     r"zeroshot\.models\[0\]: toy model 'clip-vt' is not defined under toy_models"),
    ({"zeroshot": {"models": ["open_clip:ViT-B-99@laion2b_s34b_b88k"]}},
     r"zeroshot\.models\[0\]: open_clip has no architecture 'ViT-B-99'"),
    ({"zeroshot": {"models": ["hf:/nowhere/model"]}},
     r"local model directory /nowhere/model does not exist"),
    ({"zeroshot": {"tasks": ["toy-colr"]}}, r"zeroshot\.tasks\[0\]: unknown zero-shot task"),
    ({"zeroshot": {"tasks": ["toy-shape", "toy-shape"]}}, r"zeroshot\.tasks: names \['toy-shape'\]"),
    ({"zeroshot": {"templates": {"toy-size": ["a {}"]}}}, r"zeroshot\.templates\.toy-size"),
    ({"inversion": {"extractors": ["toy:nope"]}}, r"inversion\.extractors\[0\]: toy model 'nope'"),
    ({"inversion": {"operators": {"model": "toy:clip-vit"}}},
     r"inversion\.operators\.model: 'toy:clip-vit' is not one of inversion\.extractors"),
    ({"inversion": {"layer": 7}}, r"inversion\.layer: toy:siglip-32: layer 7 is outside"),
    ({"inversion": {"dataset": "toy-colour-opps"}}, r"inversion\.dataset: unknown dataset"),
    ({"inversion": {"eval_split": "holdout"}},
     r"inversion split: dataset 'toy' has no split 'holdout'; it has \['test', 'train', 'val'\]"),
    ({"heads": {"fit": {"dataset": "cifar10", "split": "val"}, "factors": {"enabled": False}}},
     r"heads\.fit split: dataset 'cifar10' has no split 'val'"),
    ({"heads": {"layers": [9]}}, r"heads\.layers: toy:clip-vit: layer 9 is outside"),
    ({"heads": {"neighbours": {"heads": [[0, 5]]}}},
     r"heads\.neighbours\.heads: toy:clip-vit: \[\[0, 5\]\] are not \[layer, head\] pairs"),
    ({"heads": {"spurious": {"task": "toy-shape"}}}, r"heads\.spurious\.task: must be"),
    ({"heads": {"textspan": {"n_texts": 2, "replace_n_texts": [1, 3]}}},
     r"heads\.textspan\.replace_n_texts: asks for 3 texts per head, but .*n_texts = 2"),
    ({"results": "/etc/passwd"}, r"results: /etc/passwd exists and is not a directory"),
    ({"neurons": {"shift": {"truth": {"factor": "colour", "value": "teal"}}}},
     r"neurons\.shift\.truth: colour = 'teal' is not a toy factor value"),
    ({"neurons": {"segmentation": {"task": "toy-hue"}}},
     r"neurons\.segmentation\.task: unknown zero-shot task 'toy-hue'"),
    ({"sae": {"tasks": ["toy-hue"]}}, r"sae\.tasks\[0\]: unknown zero-shot task 'toy-hue'"),
    ({"sae": {"fit_split": "holdout"}}, r"sae\.fit_split: dataset 'toy' \(task toy-colour\) has no"),
    ({"sae": {"saes": {"big": {"kind": "topk", "k": 200, "expansion": 2}}}},
     r"sae\.saes\.big\.k: k = 200 active latents, but the dictionary has \d+ \(2 x toy:clip-vit"),
    ({"sae": {"saes": {"t": {"kind": "topk"}}}}, r"sae\.saes\.t: a topk SAE needs \['k'\]"),
    ({"sae": {"saes": {"t": {"kind": "relu_l1", "l1": 0.1, "k": 4}}}},
     r"sae\.saes\.t: \['k'\] do not apply to a relu_l1 SAE"),
    ({"purity": {"misalign": {"dataset": "cifar10"}}},
     r"purity\.misalign\.dataset: 'cifar10' has no captions; .* \('coco2017', 'cc3m'\)"),
    ({"purity": {"misalign": {"dataset": "cc3m", "split": "train", "captions": "poor"}}},
     r"purity\.misalign\.captions: 'cc3m' has one kind of caption"),
    ({"purity": {"misalign": {"dataset": "cc3m", "split": "test"}}},
     r"purity\.misalign\.split: dataset 'cc3m' has no split 'test'; it has \['train', 'val'\]"),
    ({"purity": {"misalign": {"neighbours": {"search": "annoy"}}}},
     r"purity\.misalign\.neighbours\.search"),
]


@pytest.mark.parametrize("edit,message", REFERENCE_MISTAKES,
                         ids=[m.split(":")[0].replace("\\", "") for _, m in REFERENCE_MISTAKES])
def test_a_config_naming_what_does_not_exist_fails_naming_the_key(edit, message):
    with pytest.raises(ConfigError, match=message):
        st.load_settings(deep_merge(config("configs/test.yaml"), edit))


def test_every_problem_is_reported_at_once():
    bad = deep_merge(config("configs/test.yaml"),
                     {"zeroshot": {"models": ["toy:clip-vt"], "tasks": ["toy-colr"]},
                      "inversion": {"layer": 7}})
    with pytest.raises(ConfigError) as err:
        st.load_settings(bad)
    assert err.value.args[0].count("\n  ") == 4  # two models... one per key
    for key in ("zeroshot.models[0]", "zeroshot.tasks[0]", "inversion.layer"):
        assert key in str(err.value)


def test_planned_shards_cap_at_one_per_batch_of_known_rows():
    from cliplens.core.settings.references import planned_shards

    toy = st.load_settings(config("configs/test.yaml")).toy
    assert planned_shards(2, "toy", "test", 64, toy) == (2, None)  # 200 rows: 4 batches
    n, why = planned_shards(500, "toy", "test", 64, toy)
    assert n == 4 and "500 shards requested for the 200 rows of toy/test" in why
    assert planned_shards(500, "toy", "test", 64, toy, rows=40)[0] == 1
    assert planned_shards(500, "cifar10", "test", 64, toy) == (500, None)  # rows unknown


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root writes anywhere")
def test_a_results_folder_nobody_may_write_fails(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match=rf"results: {locked} is not writable"):
        st.load_settings(deep_merge(config("configs/test.yaml"), {"results": str(locked / "r")}))


def test_a_key_given_where_its_variable_name_belongs_is_not_echoed():
    cfg = config()
    cfg["sae"] = {"interpret": {"endpoint": {"key_env": "sk-live-1234567890"}}}
    with pytest.raises(ConfigError) as e:
        st.load_settings(cfg)
    assert "sae.interpret.endpoint.key_env" in str(e.value)
    assert "sk-live" not in str(e.value)
    cfg = config()
    cfg["sae"] = {"interpret": {"endpoint": {"base_url": "https://me:pw@host/v1"}}}
    with pytest.raises(ConfigError, match="must not carry a user"):
        st.load_settings(cfg)
