"""Config loading and validation against the JSON schema, with defaults filled in.

The schema is assembled from ``cliplens/schema/*.schema.yaml``: ``config.schema.yaml`` holds the
top level, and every other file holds the schema of one top-level key (its file stem), so each
section is documented beside the code that owns it.  Validation happens before Snakemake builds
a single job; a bad value fails with the dotted key path and the reason.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

SCHEMA_DIR = Path(__file__).parent / "schema"


class ConfigError(ValueError):
    """The config does not satisfy the schema; the message names the key path."""


def _yaml(text: str):
    """YAML's safe loader, in C where PyYAML has it (the schema is read while planning)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The full config schema (a dict), top level plus one fragment per section."""
    top = _yaml((SCHEMA_DIR / "config.schema.yaml").read_text())
    for frag in sorted(SCHEMA_DIR.glob("*.schema.yaml")):
        key = frag.name[: -len(".schema.yaml")]
        if key == "config":
            continue
        top.setdefault("properties", {})[key] = _yaml(frag.read_text())
    return top


def fill_defaults(instance: Any, schema: Mapping) -> Any:
    """Recursively insert ``default`` values of ``schema`` into ``instance`` (in place).

    Follows ``properties``, ``additionalProperties`` (a schema) and ``items``.  A property absent
    from ``instance`` whose subschema has a ``default`` receives a deep copy of it, and is then
    itself filled, so nested objects with default ``{}`` get their inner defaults.
    """
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for key, sub in props.items():
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                fill_defaults(instance[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, val in instance.items():
                if key not in props:
                    fill_defaults(val, extra)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for val in instance:
            fill_defaults(val, schema["items"])
    return instance


def _path(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "<top level>"


#: keys whose bad value is never echoed in an error (it may be a secret given by mistake)
SECRET_NAMES = ("key_env",)


def _message(error) -> str:
    """The schema error's message; for a key of :data:`SECRET_NAMES` without the value."""
    if error.absolute_path and error.absolute_path[-1] in SECRET_NAMES:
        return ("must be the NAME of an environment variable (letters, digits, _) that holds "
                "the key, not the key itself; the value given is not shown")
    return error.message


def validate_config(config: dict, schema: Mapping | None = None) -> dict:
    """Fill defaults into ``config`` (in place) and validate it; return it.

    Raises :class:`ConfigError` listing every violation as ``key.path: reason``.
    """
    schema = load_schema() if schema is None else schema
    fill_defaults(config, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {_path(e)}: {_message(e)}" for e in errors]
        raise ConfigError("invalid config:\n" + "\n".join(lines))
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping key given twice (plain YAML keeps the last one and
    drops the first block without a word).  Keys brought in by a ``<<: *anchor`` merge may be
    overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(
                        f"{key_node.start_mark.name}, line {line}: key {key!r} is given again "
                        f"(first on line {seen[key]}); YAML would silently drop the first "
                        "block. Merge the two into one.")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml_config(path: str | Path) -> dict:
    """A YAML config file as a dict.  A syntax error or a key given twice in one mapping raises
    :class:`ConfigError` naming the file, the line and the column."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.load(text, Loader=lambda stream: _named_loader(stream, str(path)))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {err.problem or err}"
                          + (f" ({err.context})" if err.context else "")) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys at the top level, "
                          f"not a {type(data).__name__}")
    return data


def _named_loader(stream, name: str) -> _UniqueKeyLoader:
    loader = _UniqueKeyLoader(stream)
    loader.name = name  # marks carry the file's path
    return loader


def check_config_files(paths) -> None:
    """:func:`read_yaml_config` each existing file of ``paths`` (the workflow calls this while
    it parses, so a duplicated key fails with its file and line before any job)."""
    for p in paths:
        if Path(p).is_file():
            read_yaml_config(p)


def load_config(path: str | Path, overrides: Mapping | None = None) -> dict:
    """Read a YAML config (:func:`read_yaml_config`), merge ``overrides`` (deep), validate and
    fill defaults."""
    cfg = read_yaml_config(path)
    if overrides:
        cfg = deep_merge(cfg, overrides)
    return validate_config(cfg)


def deep_merge(base: Mapping, update: Mapping) -> dict:
    """A new dict: ``base`` with ``update`` merged in recursively (update wins)."""
    out = copy.deepcopy(dict(base))
    for key, val in update.items():
        if isinstance(val, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out
