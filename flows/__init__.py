"""Prefect flows (installed as ``repint.flows``): ingest -> boundaries -> interpret -> evaluate.
Layer 4: imports the core, ``repint.storage`` and ``repint.tasks``, never ``repint.app``
(tests/test_layering.py). Imported lazily: ``repint.flows.spec`` alone does not pull in Prefect, Dask
and every task."""

from typing import Any

_WHERE = {"ingest_flow": "stages", "centres_flow": "stages", "boundaries_flow": "stages", "interpret_flow": "stages",
          "evaluate_flow": "stages", "pipeline": "run", "study": "studies", "reinterpret": "entry",
          "run_pipeline": "entry"}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in __all__:
        import importlib

        return getattr(importlib.import_module(f"repint.flows.{_WHERE[name]}"), name)
    raise AttributeError(name)
