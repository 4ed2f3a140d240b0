# Path and lookup helpers shared by every rules file.
import re

from cliplens.specs import parse_model_spec, slugify, unslugify

R = config["results"]
RES = config["resources"]


def all_model_specs():
    """Every model spec the config mentions (zero-shot list and trained toy models)."""
    specs = list(config["zeroshot"]["models"])
    specs += [f"toy:{name}" for name in config["toy_models"]]
    return list(dict.fromkeys(specs))


def model_slug(spec):
    return slugify(spec)


def model_spec(slug):
    """Wildcard value -> model spec string."""
    return unslugify(slug)


def model_inputs(slug):
    """Files a job needs before it can load model ``slug``: a toy model's directory, else none
    (real weights come from the Hugging Face cache, see the README)."""
    spec = parse_model_spec(model_spec(slug))
    if spec.scheme == "toy":
        return [f"{R}/models/toy/{spec.name}"]
    return []


def load_params():
    """Keyword arguments of cliplens.models.registry.load_model shared by every job."""
    return {
        "toy_root": f"{R}/models/toy",
        "device": config["device"],
        "hf_home": config["hf_home"],
    }


wildcard_constraints:
    model=r"[A-Za-z0-9._@+-]+",
    dataset=r"[A-Za-z0-9_-]+",
    split=r"[A-Za-z0-9_]+",
    toy_model=r"[A-Za-z0-9_-]+",
