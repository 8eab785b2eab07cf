"""The stage protocol every task shares: a stage's input fingerprint from its declaration
(:mod:`repint.storage.layout`) and the task that finishes a stage."""

from __future__ import annotations

from typing import Any

from prefect import task

from repint.storage import FeatureStore, fingerprint_params
from repint.storage.layout import Stage
from repint.tasks.common import open_store
from repint.tasks.runspec import RunSpec

__all__ = ["finish_stage", "stage_fingerprint"]


def stage_fingerprint(store: FeatureStore, stage: Stage, *params: Any) -> str:
    """The hash of what ``stage`` is computed from: its kind, the fingerprints of the stages it reads
    (declared in the layout, each of which must be complete) and ``params``."""
    for name in stage.reads:
        store.require_complete(name)
    stages = store.attrs.get("stages", {})
    return fingerprint_params(stage.kind.family, *(stages[name]["fingerprint"] for name in stage.reads), *params)


@task(name="finish-stage", task_run_name="finish-{stage}")
def finish_stage(spec: RunSpec, stage: str) -> str:
    """Mark ``stage`` complete once every unit has its completion record."""
    open_store(spec).finish_stage(stage)
    return stage
