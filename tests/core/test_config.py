import copy
from pathlib import Path

import pytest
import yaml

from cliplens.core.config import ConfigError, load_config, validate_config
from cliplens.core.specs import parse_model_spec, slugify, unslugify

ROOT = Path(__file__).resolve().parents[2]


def test_default_config_validates_and_gets_defaults():
    cfg = load_config(ROOT / "config.yaml")
    assert cfg["toy"]["textured_background"] is False  # filled from the schema
    assert cfg["cache"]["dtype"] in ("float16", "float32")
    assert cfg["toy"]["spurious"]["splits"] == {"train": 4000, "test": 2000}


def test_empty_config_is_all_defaults():
    cfg = validate_config({})
    assert cfg["results"] == "results" and cfg["toy"]["splits"]["train"] == 20000


@pytest.mark.parametrize(
    "edit, key",
    [
        ({"toy": {"splits": {"trian": 5}}}, "toy.splits"),
        ({"toy": {"splits": {"train": -5}}}, "toy.splits.train"),
        ({"cache": {"dtype": "float8"}}, "cache.dtype"),
        ({"zeroshot": {"models": ["clip-vit"]}}, "zeroshot.models.0"),
        ({"device": "gpu"}, "device"),
        ({"colour": 1}, "<top level>"),
    ],
)
def test_a_bad_config_names_the_bad_key(edit, key):
    with pytest.raises(ConfigError) as err:
        validate_config(copy.deepcopy(edit))
    lines = str(err.value).splitlines()[1:]
    assert any(line.strip().startswith(f"{key}:") for line in lines), str(err.value)


@pytest.mark.parametrize("name", ["paper.yaml", "test.yaml"])
def test_shipped_configs_validate(name):
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    over = yaml.safe_load((ROOT / "configs" / name).read_text())
    from cliplens.core.config import deep_merge

    validate_config(deep_merge(base, over))


@pytest.mark.parametrize(
    "spec",
    ["open_clip:ViT-B-16@laion2b_s34b_b88k", "hf:google/siglip2-base-patch16-512", "toy:clip-vit",
     "open_clip:RN50"],
)
def test_spec_slugs_round_trip(spec):
    assert unslugify(slugify(spec)) == spec
    assert "/" not in slugify(spec) and ":" not in slugify(spec)
    assert str(parse_model_spec(spec)) == spec


def test_bad_specs_are_named():
    with pytest.raises(ValueError, match="unknown scheme 'timm'"):
        parse_model_spec("timm:vit")
    with pytest.raises(ValueError, match="expected"):
        parse_model_spec("ViT-B-16")


def test_a_key_given_twice_names_the_file_and_both_lines(tmp_path):
    from cliplens.core.config import read_yaml_config

    f = tmp_path / "dup.yaml"
    f.write_text("cache:\n  shards: 2\ntoy:\n  seed: 1\ncache:\n  dtype: float16\n")
    with pytest.raises(ConfigError, match=rf"{f}, line 5: key 'cache' is given again "
                                          r"\(first on line 1\)"):
        read_yaml_config(f)
    nested = tmp_path / "nested.yaml"
    nested.write_text("toy:\n  seed: 1\n  noise: 2\n  seed: 3\n")
    with pytest.raises(ConfigError, match="line 4: key 'seed'"):
        load_config(nested)


def test_merge_keys_may_be_overridden_as_yaml_intends():
    from cliplens.core.config import read_yaml_config

    cfg = read_yaml_config(Path(__file__).resolve().parents[2] / "config.yaml")  # uses <<: *a
    assert cfg["toy_models"]


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path):
    import subprocess
    import sys

    from cliplens.core.config import read_yaml_config

    f = tmp_path / "bad.yaml"
    f.write_text("cache:\n  shards: 2\n  dtype: [float16\n")
    with pytest.raises(ConfigError, match=rf"{f}, line 4, column 1: not valid YAML"):
        read_yaml_config(f)
    # the command the Snakefile's comment points to, for a --configfile Snakemake cannot read
    out = subprocess.run([sys.executable, "-m", "cliplens.core.settings", str(f)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and f"{f}, line 4, column 1" in out.stderr
    good = tmp_path / "good.yaml"
    good.write_text("neurons: {sparse: {k: 32}}\n")
    out = subprocess.run([sys.executable, "-m", "cliplens.core.settings", str(good)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"ok: {good}", out.stderr
    bad = tmp_path / "badkey.yaml"
    bad.write_text("neurons: {sparse: {k: 500, text_sets: ['builtin:pascal-context']}}\n")
    out = subprocess.run([sys.executable, "-m", "cliplens.core.settings", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "neurons.sparse.k" in out.stderr
