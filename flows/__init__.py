"""Prefect flows (installed as ``repint.flows``). Imported lazily: ``repint.flows.spec`` alone does
not pull in Prefect, Dask and every task."""

from typing import Any

__all__ = ["boundaries_flow", "evaluate_flow", "ingest_flow", "interpret_flow", "pipeline", "run_config", "study"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("repint.flows.dag"), name)
    raise AttributeError(name)
