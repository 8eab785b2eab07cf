"""Prefect flows (installed as ``repint.flows``). Imported lazily: ``repint.flows.spec`` alone does
not pull in Prefect, Dask and every task."""

from typing import Any

_DAG = ["boundaries_flow", "evaluate_flow", "ingest_flow", "interpret_flow", "pipeline", "study"]
_ENTRY = ["reinterpret", "run_pipeline"]
__all__ = [*_DAG, *_ENTRY]


def __getattr__(name: str) -> Any:
    if name in __all__:
        import importlib

        module = "repint.flows.dag" if name in _DAG else "repint.flows.entry"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(name)
