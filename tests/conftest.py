import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="session")
def toy_cfg():
    """The default ``toy`` settings (:class:`cliplens.core.settings.ToySettings`), shrunk for
    tests; ``toy_cfg.replace(seed=1)`` gives a variant."""
    import yaml

    from cliplens.core.settings import ToySettings

    cfg = yaml.safe_load(open(os.path.join(ROOT, "config.yaml")))["toy"]
    cfg["splits"] = {"train": 120, "val": 24, "test": 48}
    cfg["spurious"] = {**cfg["spurious"], "splits": {"train": 200, "test": 100}}
    cfg["shift"] = {**cfg["shift"], "n_per_year": 60}
    cfg["colour_ops"] = {**cfg["colour_ops"], "splits": {"train": 40, "test": 10}}
    return ToySettings.from_dict(cfg)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The tiny config (configs/test.yaml, smaller splits) made by the shared jobs: the toy,
    toy-spurious and toy-colour-ops datasets and the toy models clip-vit (1 layer x 2 heads),
    siglip-32 and siglip2-32.  Returns a namespace: ``S`` (settings), ``results``, ``roots``,
    ``load`` (load_model's keyword arguments, on the CPU)."""
    from types import SimpleNamespace

    import yaml

    from cliplens.core.config import deep_merge
    from cliplens.core.jobs import run_toy_world, run_train_toy_model
    from cliplens.core.settings import load_settings

    cfg = yaml.safe_load(open(os.path.join(ROOT, "config.yaml")))
    cfg = deep_merge(cfg, yaml.safe_load(open(os.path.join(ROOT, "configs", "test.yaml"))))
    cfg = deep_merge(cfg, {"toy": {"splits": {"train": 240, "val": 60, "test": 60},
                                   "spurious": {"splits": {"train": 300, "test": 60}},
                                   "colour_ops": {"splits": {"train": 24, "test": 8}}}})
    S = load_settings(cfg)
    results = tmp_path_factory.mktemp("tiny") / "results"
    for dataset in ("toy", "toy-spurious", "toy-colour-ops"):
        run_toy_world(dataset=dataset, cfg=S.toy.to_dict(),
                      out=str(results / "data" / "toy" / f"{dataset}.h5"))
    for name in ("clip-vit", "siglip-32", "siglip2-32"):
        run_train_toy_model(name=name, cfg=S.toy_models[name].to_dict(), device="cpu",
                            data=str(results / "data" / "toy" / "toy.h5"),
                            out=str(results / "models" / "toy" / name))
    return SimpleNamespace(
        S=S, results=results, roots={"results": str(results), "resources": str(results.parent)},
        load={"toy_root": str(results / "models" / "toy"), "device": "cpu", "hf_home": None})


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run fastest (and reproducibly) on one torch thread, even on a busy machine."""
    import torch

    torch.set_num_threads(1)
