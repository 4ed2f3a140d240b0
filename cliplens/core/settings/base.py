"""The machinery of typed settings: :class:`Section`, the base of every settings dataclass, and
the schema lookups it rests on (see :mod:`cliplens.core.settings`)."""

from __future__ import annotations

import collections.abc
import dataclasses
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Mapping, TypeVar

import jsonschema

from ..config import ConfigError, fill_defaults, load_schema

S = TypeVar("S", bound="Section")


def _freeze(value: Any) -> Any:
    """Deep copy of a plain value with lists turned into tuples (immutable settings)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _freeze(v) for k, v in value.items()}
    return value


def plain(value: Any) -> Any:
    """Sections, tuples and mappings -> built-in dicts and lists (what Snakemake params hold)."""
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def schema_at(path: str) -> dict:
    """The subschema at dotted ``path`` of the full config schema ('' = the top; ``*`` steps
    into ``additionalProperties``, e.g. ``toy_models.*.train``)."""
    node = load_schema()
    for key in [k for k in path.split(".") if k]:
        node = node["additionalProperties"] if key == "*" else node["properties"][key]
    return node


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_type(t: Any) -> type | None:
    return t if isinstance(t, type) and issubclass(t, Section) else None


@dataclass(frozen=True)
class Section:
    """Base of every settings dataclass (see the module docstring)."""

    SCHEMA: ClassVar[str] = ""

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any] | None = None, *,
                  where: str | None = None) -> S:
        """Defaults filled from the schema, validated, typed.  ``where`` is the dotted key that
        error messages start with (default: ``SCHEMA`` with ``*`` as written)."""
        where = cls.SCHEMA if where is None else where
        schema = schema_at(cls.SCHEMA)
        data = fill_defaults(plain(dict(data or {})), schema)
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data),
                        key=lambda e: list(e.absolute_path))
        if errors:
            lines = []
            for e in errors:
                key = ".".join([where] * bool(where) + [str(p) for p in e.absolute_path])
                lines.append(f"  {key or '<top level>'}: {e.message}")
            raise ConfigError("invalid config:\n" + "\n".join(lines))
        out = cls._build(data)
        out.check(where)
        return out

    @classmethod
    def _build(cls: type[S], data: Mapping[str, Any]) -> S:
        hints = _hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            t, value = hints[f.name], data[f.name]
            sub = _section_type(t)
            if sub is not None:
                value = sub._build(value)
            elif typing.get_origin(t) in (collections.abc.Mapping, dict) and _section_type(typing.get_args(t)[1]):
                value = {k: typing.get_args(t)[1]._build(v) for k, v in value.items()}
            else:
                value = _freeze(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    def check(self, where: str) -> None:
        """Cross-key constraints the schema cannot state; raise ConfigError naming the key.
        Nested sections are checked by their own ``check``."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Section):
                value.check(f"{where}.{f.name}" if where else f.name)
            elif isinstance(value, Mapping):
                for k, v in value.items():
                    if isinstance(v, Section):
                        v.check(f"{where}.{f.name}.{k}" if where else f"{f.name}.{k}")

    def to_dict(self) -> dict[str, Any]:
        """Plain built-in values (dicts, lists): the form rules hand to jobs as ``params``."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes`` (validated again)."""
        return type(self).from_dict({**self.to_dict(), **plain(changes)})


def fail(key: str, message: str) -> None:
    raise ConfigError(f"invalid config:\n  {key}: {message}")
