"""The run configuration (YAML), validated with pydantic: unknown keys and wrong types are errors
that name the key path."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from repint.assignment import fallbacks
from repint.centres import KMEANS
from repint.methods import available_methods, paper_methods
from repint.metrics import BASELINES, CURVE_STEPS, DEFAULT_METRICS, KEEP_FRACTION, KEEP_FRACTIONS, METRICS
from repint.qsampling import q_samplers
from repint.solver import solvers
from repint.variants import EVALUATION_KEYS, OWN_STORE_KEYS, VARIANT_KEYS, Variant

__all__ = ["ALL_METHODS", "DEVICES", "Config", "ConfigError", "demo_config", "expand_env", "load_config", "override"]

#: the paper's Table 1 methods, in its order (from the registry: ``Method.paper_order``)
ALL_METHODS = paper_methods()
QSampling = Literal[tuple(q_samplers())]  # type: ignore[valid-type]
SolverName = Literal[tuple(solvers())]  # type: ignore[valid-type]
KMeansAlgorithm = Literal[KMEANS]  # type: ignore[valid-type]
Fallback = Literal[tuple(fallbacks())]  # type: ignore[valid-type]
MetricName = Literal[METRICS]  # type: ignore[valid-type]
Baseline = Literal[BASELINES]  # type: ignore[valid-type]
#: the values of ``runtime.device`` (``cuda:N``: the N-th GPU torch sees, from 0)
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    kind: Literal["digits", "imagefolder", "arrays"] = "digits"
    reference: str | None = Field(None, description="ImageFolder directory or .npz of the reference set R")
    unseen: str | None = Field(None, description="ImageFolder directory or .npz of the unseen set S")
    image_size: int = Field(32, ge=8, le=1024)
    reference_per_class: int | None = Field(None, ge=1)
    unseen_per_class: int | None = Field(None, ge=1)
    limit: int | None = Field(None, ge=1, description="digits only: keep the first images of each split")
    channels: Literal[1, 3] | None = Field(
        None, description="image channels the model takes: 1 (grey, MNIST-style) or 3 (RGB); default: the input "
        "channels of the model's first convolution")
    mean: tuple[float, ...] = Field((0.5, 0.5, 0.5), min_length=1, max_length=3,
                                    description="normalisation mean per channel (one value: every channel); with "
                                    "model.weights, default: the weights' own (ImageNet's)")
    std: tuple[float, ...] = Field((0.25, 0.25, 0.25), min_length=1, max_length=3)

    @field_validator("mean", "std")
    @classmethod
    def _one_or_three(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) not in (1, 3):
            raise ValueError(f"give 1 value (every channel) or 3 (R, G, B), not {len(value)}")
        return value

    @model_validator(mode="after")
    def _paths_need_a_kind(self) -> DataConfig:
        """digits (the default) is the embedded demo set and reads no files: a path beside it would be ignored."""
        given = [k for k in ("reference", "unseen") if getattr(self, k)]
        if self.kind == "digits" and given:
            default = "" if "kind" in self.model_fields_set else " (the default)"
            raise ValueError(f"data.{given[0]} is set but data.kind is digits{default}, the embedded demo set, "
                             "which reads no files: set data.kind: imagefolder (a folder root/<class>/<image>) "
                             "or arrays (an .npz of images and labels)")
        return self


class ModelConfig(_Strict):
    architecture: str = "vgg-small"
    checkpoint: str | None = None
    weights: str | None = Field(None, description="torchvision's pretrained weights instead of a checkpoint: "
                                "DEFAULT or a name such as IMAGENET1K_V1 (torch hub's cache; downloaded where there "
                                "is network)")
    layer: str | None = Field(None, description="the layer whose output is psi: a module name, a graph node "
                              "name, or auto (`repint layers`' recommendation; default for vgg-*: features.<last "
                              "ReLU>)")
    num_classes: int | None = Field(None, ge=2, description="output classes (default: the data's class count)")
    allow_nonlinear_head: bool = False


class TrainConfig(_Strict):
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    augment: bool = Field(False, description="random horizontal flips and shifts by up to 1/8 of the side")
    seed: int = Field(0, ge=0)


class InterpretationConfig(_Strict):
    q: int = Field(50, ge=1, description="|Q|, the number of sampled boundaries")
    q_sampling: QSampling = Field(q_samplers()[0], description="how Q is sampled: "  # type: ignore[valid-type]
                                  + ", ".join(q_samplers()) + " (repint.qsampling)")
    solver: SolverName = Field(solvers()[0], description="how each polytope is solved: "  # type: ignore[valid-type]
                               + ", ".join(solvers()) + " (repint.solver; greedy: Algorithm 1, the paper)")
    interpretations_per_class: int = Field(10, ge=1)
    orient: bool = True
    unit_normals: bool = True
    seed: int = Field(0, ge=0)
    kmeans: KMeansAlgorithm = Field(KMEANS[0], description="how the centres V are fitted: "  # type: ignore[valid-type]
                                    + ", ".join(KMEANS) + " (repint.centres; auto: exact below "
                                    "repint.centres.EXACT_MAX_BYTES of reference features, else dask on a Dask "
                                    "cluster and minibatch without one)")


class EvaluationConfig(_Strict):
    methods: list[str] = Field(default_factory=lambda: ["RI", "Grad-CAM"])
    keep_fraction: float = Field(KEEP_FRACTION, gt=0, lt=1)
    metrics: list[MetricName] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(DEFAULT_METRICS), description="faithfulness metrics beside AD/AI at "
        "keep_fraction, on the same reused maps: " + ", ".join(METRICS) + " (repint.scoring)")
    keep_fractions: list[float] = Field(default_factory=lambda: list(KEEP_FRACTIONS), min_length=1,
                                        description="kept shares for ad-ai and road")
    curve_steps: int = Field(CURVE_STEPS, ge=2, le=256, description="deletion/insertion: steps of the curve")
    baselines: list[Baseline] = Field(default_factory=lambda: list(BASELINES), min_length=1,  # type: ignore[valid-type]
                                      description="deletion/insertion: what removed pixels become")
    fallback: Fallback = Field(fallbacks()[0], description="what RI reuses on an unseen image no polytope "  # type: ignore[valid-type]
                               "covers: " + ", ".join(fallbacks()) + " (repint.assignment)")
    case_studies: int = Field(3, ge=0)
    ace_images: int = Field(20, ge=2, description="ACE: discovery images per cluster (and random images)")
    runs: int = Field(1, ge=1, description="repeat interpretation and evaluation with seeds seed, seed+1, ...")
    variants: list[dict[str, Any]] = Field(
        default_factory=list, description="RI under other interpretation settings (q, q_sampling, solver, orient), "
        "reported beside RI, e.g. [{q_sampling: boundary-search}, {orient: false}]")

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, value: list[str]) -> list[str]:
        """Registered methods, variants of them with valid settings; written as their labels
        (``RI[orient=False]`` is ``RI[orient=false]``), each once."""
        if not value:
            raise ValueError("list at least one method, e.g. [RI, Grad-CAM]; available: "
                             + ", ".join(available_methods()))
        out: list[str] = []
        for label in value:
            variant = Variant.parse(label)
            if variant.base not in available_methods():
                raise ValueError(f"unknown method {variant.base!r}; available: {', '.join(available_methods())}")
            allowed = (*VARIANT_KEYS, *EVALUATION_KEYS)
            unknown = {k for k, _ in variant.overrides} - set(allowed)
            if unknown:
                raise ValueError(f"{label!r}: a variant sets some of {list(allowed)}, not {sorted(unknown)}")
            fallback = variant.settings.get("fallback")
            if fallback is not None and fallback not in fallbacks():
                raise ValueError(f"{label!r}: fallback must be one of {', '.join(fallbacks())}, not {fallback!r}")
            if fallback is not None and not variant.method().uses_polytope:
                raise ValueError(f"{label!r}: only RI's methods have a fallback (baselines reuse the nearest centre)")
            try:
                variant.interpretation(InterpretationConfig())
            except ValidationError as exc:
                raise ValueError(f"{label!r}: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
            if variant.label not in out:
                out.append(variant.label)
        return out

    @field_validator("keep_fractions")
    @classmethod
    def _check_fractions(cls, value: list[float]) -> list[float]:
        if any(not 0 < f < 1 for f in value):
            raise ValueError(f"every kept share must lie strictly between 0 and 1, got {value}")
        return sorted(set(value))

    @field_validator("metrics", "baselines")
    @classmethod
    def _once_each(cls, value: list[str], info: Any) -> list[str]:
        """Each once, in the declared order (so that a reordered list is the same setting)."""
        order = METRICS if info.field_name == "metrics" else BASELINES
        return [m for m in order if m in value]

    @field_validator("variants")
    @classmethod
    def _check_variants(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for v in value:
            unknown = set(v) - set(VARIANT_KEYS)
            if not v or unknown:
                raise ValueError(f"a variant sets some of {sorted(VARIANT_KEYS)}; got {v!r}")
            InterpretationConfig(**v)  # types and ranges as in the interpretation section
        return value


class RuntimeConfig(_Strict):
    device: str = "auto"
    batch_size: int = Field(128, ge=1)
    chunk_size: int = Field(256, ge=1)
    task_runner: Literal["dask", "threads"] = "dask"
    dask_address: str | None = None
    n_workers: int = Field(2, ge=1)
    writers: int = Field(2, ge=1, le=64, description="ingest: threads that compress and write ψ beside the forward "
                         "pass (a GPU outruns one: give a GPU machine about 8)")

    @field_validator("device", mode="before")
    @classmethod
    def _check_device(cls, value: Any) -> Any:
        """A device torch can name (whether it is there is checked before the first stage:
        ``repint.flows.preflight.check_device``)."""
        if isinstance(value, str) and _DEVICE.fullmatch(value.strip().lower()):
            return value.strip().lower()
        raise ValueError(f"{value!r} is not a device: use one of {', '.join(DEVICES)} (cuda:N: the N-th GPU, "
                         "from 0; auto: a GPU when torch sees one, else the CPU)")


_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, where: str = "storage_options") -> Any:
    """``${VAR}`` (or ``${VAR:-default}``) in every string of ``value`` replaced by the environment
    variable, so that credentials need not be written into config files; ``$$`` is a literal ``$``.
    An unset variable without a default is an error that names the key and the variable (never a value)."""
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ValueError(f"{where} refers to the environment variable {name}, which is not set; export it "
                         f"(or write ${{{name}:-default}})")

    return _ENV_REF.sub(sub, value)


class Config(_Strict):
    name: str = "run"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    interpretation: InterpretationConfig = InterpretationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    store: str | None = Field(None, description="path or fsspec URL of the Zarr store (default OUT/store.zarr)")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for the store URL; ${VAR} is read from the environment")

    @field_validator("storage_options", mode="before")
    @classmethod
    def _expand_env(cls, value: Any) -> Any:
        return expand_env(value) if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _q_variants_have_their_own_store(self) -> Config:
        for label in self.evaluation.methods:
            own = [(k, v) for k, v in Variant.parse(label).overrides if k in OWN_STORE_KEYS]
            changed = ", ".join(f"{k}: {v}" for k, v in own)
            what = " and ".join(dict.fromkeys(OWN_STORE_KEYS[k] for k, _ in own))
            if changed:
                raise ValueError(f"evaluation.methods: {label!r} changes {what}, which needs a store of its own: list "
                                 f"it under evaluation.variants instead (variants: [{{{changed}}}])")
        return self


def demo_config() -> Config:
    """What ``repint demo`` runs (``examples/demo.yaml`` spells it out): the paper's Table 1 on the
    embedded digits, five methods over five runs, RI's Q-sampling and orientation variants beside RI."""
    return Config.model_validate({
        "name": "demo", "data": {"kind": "digits"},
        "interpretation": {"interpretations_per_class": 3},
        "evaluation": {"methods": ALL_METHODS, "runs": 5, "ace_images": 10,
                       "variants": [{"q_sampling": "boundary-search"}, {"orient": False}]},
    })


class ConfigError(ValueError):
    """A config file that cannot be used, with the key paths that are wrong."""


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate a YAML config. Relative data/checkpoint paths are resolved against the
    config file's folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Cannot read config {path}: {exc}") from exc
    if (raw is None or raw == {}) and not overrides:  # blank, only comments, or {}
        raise ConfigError(f"Config {path} is empty: write its data and model sections (examples/config.yaml); "
                          "the embedded demo is `repint demo`.")
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"Config {path} must be a mapping of sections (data, model, ...).")
    for key, value in (overrides or {}).items():
        raw.setdefault(key, value)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        if len(lines) == 1:  # one problem: one line
            raise ConfigError(f"Config {path} is invalid: {lines[0]}") from None
        raise ConfigError(f"Config {path} is invalid:\n" + "\n".join(f"  {line}" for line in lines)) from None
    base = path.resolve().parent
    for section, key in (("data", "reference"), ("data", "unseen"), ("model", "checkpoint")):
        obj = getattr(cfg, section)
        value = getattr(obj, key)
        if value and "://" not in value and not Path(value).is_absolute():
            setattr(obj, key, str((base / value).resolve()))
    return cfg


_BOUNDS = {"greater_than_equal": "at least {ge}", "greater_than": "more than {gt}",
           "less_than_equal": "at most {le}", "less_than": "less than {lt}"}


def _problem(error: Any) -> str:
    """One pydantic error of a command-line value, said of the value."""
    bound = _BOUNDS.get(error["type"])
    text = f"must be {bound.format(**error.get('ctx', {}))}" if bound else str(error["msg"])
    return f"{text}, got {error['input']!r}"


def override(cfg: Config, key: str, value: Any, option: str) -> None:
    """Set ``key`` (``section.field``, e.g. ``evaluation.runs``) of ``cfg`` to ``value`` from the command-line
    ``option``, validated as the same value in the config file would be; a bad value is a ``ValueError``
    naming the option (``--runs: must be at least 1, got -1``)."""
    section_name, field = key.split(".")
    section = getattr(cfg, section_name)
    try:
        checked = type(section).model_validate({**section.model_dump(exclude_unset=True), field: value})
    except ValidationError as exc:
        errors = [e for e in exc.errors() if e["loc"][:1] == (field,)] or exc.errors()
        raise ValueError(f"{option}: " + "; ".join(_problem(e) for e in errors)) from None
    setattr(section, field, getattr(checked, field))
