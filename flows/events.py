"""The custom event a training job emits when it wrote a checkpoint; the ``reinterpret`` deployment's
trigger in ``prefect.yaml`` matches it and passes ``payload.checkpoint`` as the flow's parameter."""

from __future__ import annotations

import logging
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

    # The CLI exits right after: send before it does. drain_all stops the worker and waits (at most 30 s)
    # until the event is sent; stopped while the event is still queued, Prefect's QueueService warns
    # "Still processing items: 1 items remaining..." (the item counted is its own stop marker), noise that
    # `repint train` printed before its own line. That one message is kept out during the drain; errors
    # (an API that cannot be reached: "Unable to connect ...") still show.
    def not_still_processing(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Still processing items")

    worker_log = logging.getLogger(EventsWorker.__name__)  # a QueueService logs under its class name
    worker_log.addFilter(not_still_processing)
    try:
        EventsWorker.drain_all(timeout=30)
    finally:
        worker_log.removeFilter(not_still_processing)
    return event
