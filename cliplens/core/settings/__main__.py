"""``python -m cliplens.core.settings FILE [FILE ...]``: check config files without Snakemake."""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError, deep_merge, read_yaml_config
from . import load_settings


def main(argv=None) -> int:
    """``python -m cliplens.core.settings FILE...``: check config files (YAML syntax with file and
    line, duplicate keys, then the schema of config.yaml merged with them, in order)."""
    import sys

    files = list(sys.argv[1:] if argv is None else argv)
    default = Path(__file__).resolve().parents[3] / "config.yaml"  # the repository's
    try:
        cfg = read_yaml_config(default) if default.is_file() else {}
        for f in files:
            cfg = deep_merge(cfg, read_yaml_config(f))
        load_settings(cfg)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"ok: {', '.join(files) or 'config.yaml'}")
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    raise SystemExit(main())
