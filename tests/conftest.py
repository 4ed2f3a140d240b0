import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def toy_cfg():
    """The validated default ``toy`` config section, shrunk for tests."""
    from cliplens.config import load_config

    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "config.yaml"))["toy"]
    cfg["splits"] = {"train": 120, "val": 24, "test": 48}
    cfg["spurious"]["splits"] = {"train": 200, "test": 100}
    cfg["shift"]["n_per_year"] = 60
    cfg["colour_ops"]["splits"] = {"train": 40, "test": 10}
    return cfg
