"""Settings of study 002, sparse autoencoders (``sae.schema.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from ..config import ConfigError
from .base import Section


@dataclass(frozen=True)
class SaeTrain(Section):
    SCHEMA: ClassVar[str] = "sae.train"
    batch_size: int
    epochs: float
    lr: float
    seed: int
    normalise: bool
    memory_mb: int
    checkpoint_every: int


#: the keys each SAE kind needs beyond ``kind`` and ``expansion``, and every key it accepts
NEEDS = {"relu_l1": ("l1",), "topk": ("k",), "batchtopk": ("k",), "jumprelu": ("l0",)}
ACCEPTS = {"relu_l1": {"l1"}, "topk": {"k", "aux", "dead_after", "seed"},
           "batchtopk": {"k", "aux", "dead_after", "seed"},
           "jumprelu": {"l0", "bandwidth", "seed"}}


@dataclass(frozen=True)
class SaeSpec(Section):
    """One SAE of ``sae.saes``; the variant's own keys are null when not given."""

    SCHEMA: ClassVar[str] = "sae.saes.*"
    kind: str
    expansion: float
    l1: float | None
    k: int | None
    aux: float | None
    dead_after: int | None
    l0: float | None
    bandwidth: float | None
    seed: int | None

    def given(self) -> set[str]:
        return {k for k in ("l1", "k", "aux", "dead_after", "l0", "bandwidth", "seed")
                if getattr(self, k) is not None}

    def params(self) -> dict[str, Any]:
        """What the job builds the SAE from: kind, expansion and the keys given."""
        return {"kind": self.kind, "expansion": self.expansion,
                **{k: getattr(self, k) for k in sorted(self.given())}}

    def check(self, where: str) -> None:
        """The keys its kind needs are given, and no key of another kind."""
        super().check(where)
        missing = [k for k in NEEDS[self.kind] if getattr(self, k) is None]
        other = sorted(self.given() - ACCEPTS[self.kind])
        bad = []
        if missing:
            bad.append(f"  {where}: a {self.kind} SAE needs {missing}")
        if other:
            bad.append(f"  {where}: {other} do not apply to a {self.kind} SAE")
        if bad:
            raise ConfigError("invalid config:\n" + "\n".join(bad))


@dataclass(frozen=True)
class SaeFeatures(Section):
    SCHEMA: ClassVar[str] = "sae.features"
    top: int
    show: int
    describe: int


@dataclass(frozen=True)
class SaeEndpoint(Section):
    SCHEMA: ClassVar[str] = "sae.interpret.endpoint"
    base_url: str | None
    model: str | None
    key_env: str
    concurrency: int
    timeout: float
    retries: int
    max_tokens: int


@dataclass(frozen=True)
class SaePrompts(Section):
    """The endpoint's prompt per language."""

    SCHEMA: ClassVar[str] = "sae.interpret.prompts"
    en: str
    ru: str


@dataclass(frozen=True)
class SaeTextSets(Section):
    """The baseline's text set per language, item for item translations."""

    SCHEMA: ClassVar[str] = "sae.interpret.text_sets"
    en: str
    ru: str


@dataclass(frozen=True)
class SaeInterpret(Section):
    SCHEMA: ClassVar[str] = "sae.interpret"
    interpreter: str
    languages: tuple[str, ...]
    prompts: SaePrompts
    text_sets: SaeTextSets
    endpoint: SaeEndpoint
    max_chars: int
    random_images: int

    def check(self, where: str) -> None:
        """An endpoint interpreter needs the endpoint's base_url and model; a base_url is a
        plain http(s) URL (no credentials in it)."""
        super().check(where)
        bad = []
        if self.interpreter == "endpoint":
            bad += [f"  {where}.endpoint.{k}: needed by interpreter: endpoint"
                    for k in ("base_url", "model") if not getattr(self.endpoint, k)]
        url = self.endpoint.base_url
        if url:
            from urllib.parse import urlsplit

            u = urlsplit(url)
            if u.scheme not in ("http", "https") or not u.hostname:
                bad.append(f"  {where}.endpoint.base_url: not an http(s) URL")
            elif u.username or u.password or u.query or u.fragment:
                bad.append(f"  {where}.endpoint.base_url: must not carry a user, password, "
                           f"query or fragment (the URL is written to logs); the key goes in "
                           f"the variable named by key_env")
        if bad:
            raise ConfigError("invalid config:\n" + "\n".join(bad))


@dataclass(frozen=True)
class SaeSettings(Section):
    SCHEMA: ClassVar[str] = "sae"
    model: str
    tasks: tuple[str, ...]
    fit_split: str
    saes: Mapping[str, SaeSpec]
    train: SaeTrain
    features: SaeFeatures
    interpret: SaeInterpret
