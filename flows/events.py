"""The custom event a training job emits when it wrote a checkpoint; the ``reinterpret`` deployment's
trigger in ``prefect.yaml`` matches it and passes ``payload.checkpoint`` as the flow's parameter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["CHECKPOINT_UPDATED", "emit_checkpoint_updated"]

CHECKPOINT_UPDATED = "repint.checkpoint.updated"


def emit_checkpoint_updated(checkpoint: str, meta: dict[str, Any] | None = None) -> Any:
    """Emit ``repint.checkpoint.updated`` for ``checkpoint`` (resource ``repint.checkpoint.<file name>``)
    to the Prefect API of this process; returns the event (``None`` when events are off)."""
    from prefect.events import emit_event

    path = Path(checkpoint).resolve()
    meta = meta or {}
    payload = {"checkpoint": str(path), **{k: meta[k] for k in ("train_accuracy", "test_accuracy", "fingerprint")
                                          if k in meta}}
    event = emit_event(CHECKPOINT_UPDATED, resource={"prefect.resource.id": f"repint.checkpoint.{path.stem}",
                                                     "prefect.resource.name": path.name}, payload=payload)
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=30)  # the CLI exits right after: send before it does
    return event
