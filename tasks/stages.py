"""The stage protocol every task shares: a stage's input fingerprint from its declaration
(:mod:`repint.storage.layout`) and the task that finishes a stage."""

from __future__ import annotations

from typing import Any

from prefect import task

from repint.storage import FeatureStore, fingerprint_params
from repint.storage.layout import Stage, StageKind
from repint.tasks.common import logger, open_store
from repint.tasks.runspec import RunSpec
from repint.variants import Variant

__all__ = ["finish_stage", "retire_label_stage", "stage_fingerprint"]


def stage_fingerprint(store: FeatureStore, stage: Stage, *params: Any, lead: tuple[Any, ...] = ()) -> str:
    """The hash of what ``stage`` is computed from: its kind, ``lead``, the fingerprints of the
    stages it reads (declared in the layout, each of which must be complete) and ``params``. (``lead``
    keeps the order in which stores written before the layout was declared hashed them: the same
    inputs keep their fingerprint, and those stores' stages stay trusted.)"""
    for name in stage.reads:
        store.require_complete(name)
    stages = store.attrs.get("stages", {})
    return fingerprint_params(stage.kind.family, *lead, *(stages[name]["fingerprint"] for name in stage.reads),
                              *params)


def retire_label_stage(store: FeatureStore, kind: StageKind, method: Variant) -> None:
    """Stores written before variants had keys named a variant's stage and group by its label
    (``interpret-RI[orient=false]``); that stage is dropped, and its results are made again under
    the key, so no store keeps two copies of one variant."""
    if method.label != method.key and store.drop_stage(kind.of(method.label).name, kind.of(method.label).reset_paths):
        logger().info(f"dropped the stage {kind.of(method.label).name} of an older layout; "
                      f"it is {kind.of(method.key).name} now")


@task(name="finish-stage", task_run_name="finish-{stage}")
def finish_stage(spec: RunSpec, stage: str) -> str:
    """Mark ``stage`` complete once every unit has its completion record."""
    open_store(spec).finish_stage(stage)
    return stage
