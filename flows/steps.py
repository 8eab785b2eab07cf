"""Deployment pull steps (``prefect.yaml``) that work wherever the worker runs."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["enter_checkout"]


def _is_checkout(path: Path) -> bool:
    return (path / "prefect.yaml").is_file() and (path / "flows" / "entry.py").is_file()


def enter_checkout(directory: str | None = None) -> dict[str, str]:
    """Make the worker's RepInt checkout the working directory: ``directory`` (``$REPINT_HOME`` in
    ``prefect.yaml``) when given, else the checkout the installed ``repint`` package comes from (an
    editable install). Relative paths in deployment parameters are relative to it. Nothing of the
    deploying machine is baked into the deployment."""
    import repint

    candidates = [Path(directory).expanduser()] if directory else []
    candidates.append(Path(repint.__file__).resolve().parents[1])
    for path in candidates:
        if _is_checkout(path):
            os.chdir(path)
            return {"directory": str(path)}
    tried = ", ".join(str(p) for p in candidates)
    raise ValueError(f"No RepInt checkout (a folder with prefect.yaml and flows/entry.py) at {tried}. On the "
                     "worker, set REPINT_HOME to the checkout's path, or install repint from a checkout with "
                     "`pip install -e .`.")
