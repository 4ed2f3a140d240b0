"""Typed settings: one frozen dataclass per slice of the config schema.

The JSON schema (``cliplens/core/schema/*.schema.yaml``) is the one source of keys, defaults and
documentation.  Each :class:`Section` subclass names the schema path it mirrors (``SCHEMA``) and
declares one field per property of that path, with a type but **no default**:
:meth:`Section.from_dict` fills the schema's defaults into a copy of the data, validates it (an
unknown key, a wrong type or a value out of range raises :class:`~cliplens.core.config.ConfigError`
naming the dotted key), converts nested sections and freezes lists into tuples, then runs the
section's cross-key checks (:meth:`Section.check`).  ``tests/core/test_settings.py`` holds every
section against its schema, so a key added to one and not the other fails there.

The workflow builds :class:`Settings` once, when the Snakefile is parsed (:func:`load_settings`);
rules hand each job its own slice as plain built-in values (:meth:`Section.to_dict`), and the job
rebuilds the typed slice with ``XSettings.from_dict(params)``.  Library functions take these
objects, never a raw dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from ..config import ConfigError, validate_config
from .base import Section, plain, schema_at
from .heads import (FactorSettings, HeadsFit, HeadsSettings, NeighbourSettings,
                    SegmentationSettings, SpuriousSettings, TextSpanSettings)
from .sae import (SaeEndpoint, SaeFeatures, SaeInterpret, SaePrompts, SaeSettings, SaeSpec,
                  SaeTextSets, SaeTrain)
from .neurons import (NeuronComponents, NeuronEffects, NeuronEvidence, NeuronRetrieval,
                      NeuronSegmentation, NeuronShift, NeuronSparse, NeuronsSettings, NeuronTable)
from .purity import (MisalignNeighbours, MisalignTrain, PurityMisalign, PurityPruning,
                     PuritySettings)
from .references import check_references, results_problem
from .inversion import (InversionFigure, InversionSettings, OperatorSettings,
                        ReconstructorSettings, ReconstructorTrain, SimilaritySettings)
from .shared import CacheSettings, ZeroshotSettings
from .toy import (Batching, ColourOpsWorld, ImageObjective, PartialCaptions, ShiftWorld,
                  SpuriousWorld, ToyConfigError, ToyModelSettings, ToySettings, ToySplits,
                  ToyText, ToyTrain, ToyVision)

__all__ = [
    "Batching", "CacheSettings", "ColourOpsWorld", "FactorSettings", "HeadsFit", "HeadsSettings",
    "ImageObjective", "InversionFigure", "InversionSettings", "NeighbourSettings",
    "NeuronComponents", "NeuronEffects", "NeuronEvidence", "NeuronRetrieval",
    "NeuronSegmentation", "NeuronShift", "NeuronSparse", "NeuronTable", "NeuronsSettings",
    "OperatorSettings", "SaeEndpoint", "SaeFeatures", "SaeInterpret", "SaePrompts",
    "SaeSettings", "SaeSpec", "SaeTextSets", "SaeTrain", "PartialCaptions", "PurityPruning",
    "PuritySettings", "PurityMisalign", "MisalignTrain", "MisalignNeighbours",
    "ReconstructorSettings", "ReconstructorTrain",
    "Section", "SegmentationSettings", "Settings", "ShiftWorld", "SimilaritySettings",
    "SpuriousSettings", "SpuriousWorld", "TextSpanSettings", "ToyConfigError",
    "ToyModelSettings", "ToySettings", "ToySplits", "ToyText", "ToyTrain", "ToyVision",
    "ZeroshotSettings", "load_settings", "plain", "schema_at", "settings_from_file",
]



@dataclass(frozen=True)
class Settings(Section):
    """The whole workflow config (config.schema.yaml and one section per top-level key)."""

    SCHEMA: ClassVar[str] = ""
    results: str
    resources: str
    device: str
    hf_home: str | None
    toy: ToySettings
    toy_models: Mapping[str, ToyModelSettings]
    zeroshot: ZeroshotSettings
    cache: CacheSettings
    inversion: InversionSettings
    heads: HeadsSettings
    neurons: NeuronsSettings
    sae: SaeSettings
    purity: PuritySettings

    def check(self, where: str) -> None:
        """Each section's own checks, then what the config names against what exists
        (:func:`~.references.check_references`) and the results folder: every problem at once,
        each under its dotted key."""
        super().check(where)
        problems = check_references(self)
        why = results_problem(self.results)
        if why:
            problems.append(("results", why))
        if problems:
            raise ConfigError("invalid config:\n" + "\n".join(f"  {k}: {m}" for k, m in problems))


def load_settings(config: dict) -> Settings:
    """Validate ``config`` (filling its defaults in place, as Snakemake's config dict needs them)
    and return the typed :class:`Settings`.  Raises ConfigError naming every bad key."""
    validate_config(config)
    return Settings.from_dict(config)


def settings_from_file(path, overrides: Mapping[str, Any] | None = None) -> Settings:
    """:class:`Settings` of a YAML config file (``overrides`` merged in first), e.g. in a
    notebook: ``settings_from_file("config.yaml").toy_models["clip-vit"]``."""
    from ..config import load_config

    return load_settings(load_config(path, overrides))
