"""The run spec: everything a task needs to find its inputs, typed; one per run, passed to every task.

The config's sections travel as the validated objects themselves (:class:`InterpretationConfig`,
:class:`EvaluationConfig`, :class:`RuntimeConfig`, :class:`TrainConfig`), so a default is declared
once, in :mod:`repint.config`. What ``build_spec`` resolves from the config (the data sources, the
model with its checkpoint's hash and layer) are the dicts the core's loaders read.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_serializer, field_validator, model_validator

from repint.config import EvaluationConfig, InterpretationConfig, RuntimeConfig, TrainConfig
from repint.storage import mask_secrets, protect_secrets, redact_url, split_url_credentials
from repint.variants import Variant

__all__ = ["RunSpec"]


class RunSpec(BaseModel):
    """Everything a task needs to find its inputs; passed to every task (no big arrays).

    A flow parameter, so Prefect stores its JSON form (``model_dump(mode="json")``) and shows it in
    the UI: every credential in ``storage_options`` (``key``, ``secret``, ``token``, ``password``,
    ``aws_secret_access_key`` in ``client_kwargs``, ...) is a ``SecretStr`` that serialises as
    ``**********``, and credentials in an ``s3://KEY:SECRET@bucket`` store URL are moved into
    ``storage_options``. The real values stay in the object (and survive pickling to Dask workers);
    ``FeatureStore`` reveals them only to fsspec."""

    store: str
    storage_options: dict[str, Any] = Field(default_factory=dict)
    out_dir: str
    dataset: str
    reference: dict[str, Any] = Field(description="the reference set's source spec (repint.data.source_from_spec)")
    unseen: dict[str, Any] = Field(description="the unseen set's source spec")
    model: dict[str, Any] = Field(description="the resolved model: architecture, checkpoint and its SHA-256, layer, "
                                  "normalisation, image size (what repint.nets.load_network reads)")
    train: TrainConfig = TrainConfig()
    interpretation: InterpretationConfig = InterpretationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_store_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("store"), str):
            store, options = split_url_credentials(data["store"], data.get("storage_options") or {})
            data = {**data, "store": store, "storage_options": options}
        return data

    @field_validator("storage_options")
    @classmethod
    def _protect_credentials(cls, value: dict[str, Any]) -> dict[str, Any]:
        return protect_secrets(value)

    @field_serializer("storage_options", when_used="json")
    def _mask_credentials(self, value: dict[str, Any]) -> dict[str, Any]:
        return mask_secrets(value)  # also what a model_copy(update=...) put in without validation

    @field_serializer("store", when_used="json")
    def _redact_store(self, value: str) -> str:
        return redact_url(value)

    def __repr_args__(self) -> Any:  # repr() and str(): the store URL without user info, too
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "store" and isinstance(value, str) else value

    @property
    def chunk_size(self) -> int:
        return self.runtime.chunk_size

    @property
    def methods(self) -> list[Variant]:
        """``evaluation.methods`` as values (labels parsed once, here)."""
        return [Variant.parse(m) for m in self.evaluation.methods]

    def settings(self, method: Variant) -> InterpretationConfig:
        """The ``interpretation`` settings ``method`` runs with (its overrides on the run's)."""
        return method.interpretation(self.interpretation)
