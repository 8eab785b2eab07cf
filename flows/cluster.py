"""Preflight checks of an existing Dask cluster before RepInt's tasks run on it (``--dask-address``,
``runtime.dask_address``).

A task shipped to a worker is a reference to ``repint.tasks...``: a worker without RepInt, or one
that cannot see the store, fails each task with an unpickling or file error deep inside Dask. The
probe here runs on every worker first (``Client.run``) and turns that into one clear error per
worker. The probe is pickled *by value* (this module is registered with cloudpickle), so a worker
that cannot import ``repint`` still runs it and says so. That is why this module imports only the
standard library at module level; Dask, cloudpickle and fsspec are imported inside the functions.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
from typing import Any

__all__ = ["INSTALL_HINT", "STORE_HINT", "ClusterError", "check_cluster", "check_scheduler", "connect",
           "probe_worker"]

#: What a worker that cannot import RepInt needs.
INSTALL_HINT = "install repint (pip install -e . or the same wheel) in the workers' environment"
#: What a worker that cannot reach the store needs.
STORE_HINT = ("put the store where every worker can reach it: a shared file system path or an object-store URL "
              "such as s3://bucket/path.zarr (config keys `store` and `storage_options`)")
#: The module every Dask-parallel task of RepInt lives in (what a worker unpickles).
TASK_MODULE = "repint.tasks.boundaries"


class ClusterError(ValueError):
    """An existing Dask cluster that cannot run RepInt's tasks: the scheduler cannot be reached, it
    has no workers, or a worker lacks RepInt or cannot reach the store."""


def _local_path(store: str) -> str | None:
    """The file system path of a local store, ``None`` for an fsspec URL."""
    if store.startswith("file://"):
        return store[len("file://"):]
    return None if "://" in store else store


def _store_root_id(store: str, storage_options: dict[str, Any]) -> str | None:
    """Check that ``store`` is reachable from this process; return its ``store_id`` (read from the
    Zarr group's ``zarr.json``). Raises what the file system raises."""
    path = _local_path(store)
    if path is not None:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no directory {path} on this machine")
        with open(os.path.join(path, "zarr.json"), "rb") as f:
            raw = f.read()
    else:
        import fsspec

        fs, root = fsspec.core.url_to_fs(store, **(storage_options or {}))
        fs.ls(root)  # listable, not just a prefix that happens to parse
        raw = fs.cat_file(root.rstrip("/") + "/zarr.json")
    attrs = json.loads(raw).get("attributes", {})
    return attrs.get("store_id")


def probe_worker(store: str, storage_options: dict[str, Any] | None = None,
                 task_module: str = TASK_MODULE) -> dict[str, Any]:
    """Runs on a worker: can it import RepInt (and the task module) and reach the store? Never
    raises; problems are returned as ``repint_error`` / ``store_error`` strings."""
    out: dict[str, Any] = {"host": socket.gethostname(), "python": sys.version.split()[0],
                           "executable": sys.executable, "prefect_api_url": os.environ.get("PREFECT_API_URL")}
    try:
        import repint

        out["repint_version"] = str(getattr(repint, "__version__", "unknown"))
        out["repint_path"] = os.path.dirname(repint.__file__ or "")
        importlib.import_module(task_module)
    except Exception as exc:
        where = "repint" if "repint_version" not in out else task_module
        out["repint_error"] = f"cannot import {where}: {type(exc).__name__}: {exc}"
    try:
        out["store_id"] = _store_root_id(store, storage_options or {})
    except Exception as exc:
        out["store_error"] = f"{type(exc).__name__}: {exc}"
    return out


def _quiet_dask() -> None:
    import logging

    # Dask's INFO/WARNING chatter (connections, closed comms) is not the user's business
    logging.getLogger("distributed").setLevel(max(logging.ERROR, logging.getLogger("distributed").level))


def connect(address: str, timeout: float = 5.0) -> Any:
    """A ``distributed.Client`` on the scheduler at ``address``, or a :class:`ClusterError` that
    names the address when it does not answer within ``timeout`` seconds."""
    from distributed import Client

    _quiet_dask()
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except Exception as exc:
        raise ClusterError(
            f"Cannot reach the Dask scheduler at {address} (no answer within {timeout:g} s: "
            f"{type(exc).__name__}: {exc}). Start it (`dask scheduler`) and its workers "
            f"(`dask worker {address}`), or fix --dask-address / runtime.dask_address.") from None


def check_scheduler(address: str, timeout: float = 5.0) -> None:
    """Fail fast (before any training or ingest) when the scheduler at ``address`` is unreachable."""
    connect(address, timeout).close()


def _register_by_value() -> None:
    import cloudpickle

    if __name__ not in cloudpickle.list_registry_pickle_by_value():
        cloudpickle.register_pickle_by_value(sys.modules[__name__])


def check_cluster(address: str, store: str, storage_options: dict[str, Any] | None = None, *,
                  store_id: str | None = None, timeout: float = 5.0,
                  worker_timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """Probe every worker of the cluster at ``address``: RepInt importable at this client's version,
    the store reachable (and the same store: its ``store_id`` where given). Returns each worker's
    probe; raises :class:`ClusterError` listing every worker's problem and what to do about it."""
    import repint

    _register_by_value()  # distributed pickles functions of by-value modules with cloudpickle
    client = connect(address, timeout)
    try:
        try:
            client.wait_for_workers(1, timeout=worker_timeout)
        except Exception:
            raise ClusterError(f"The Dask scheduler at {address} has no workers (waited {worker_timeout:g} s). "
                               f"Start some with `dask worker {address}`.") from None
        results = client.run(probe_worker, store, dict(storage_options or {}), on_error="return")
    finally:
        client.close()
    mine = str(repint.__version__)
    problems = []
    for worker, r in sorted(results.items()):
        if isinstance(r, BaseException):
            problems.append(f"worker {worker}: the probe itself failed ({type(r).__name__}: {r}); check that the "
                            f"workers run Python {sys.version.split()[0]} with dask/distributed like this client")
            continue
        on = f"worker {worker} (host {r['host']}, {r['executable']})"
        if "repint_error" in r:
            problems.append(f"{on} {r['repint_error']}: {INSTALL_HINT}")
        elif r["repint_version"] != mine:
            problems.append(f"{on} has repint {r['repint_version']} (at {r['repint_path']}), this client has "
                            f"{mine}: install the same version ({INSTALL_HINT})")
        if "store_error" in r:
            problems.append(f"{on} cannot reach the store {store} ({r['store_error']}): {STORE_HINT}")
        elif store_id and r.get("store_id") != store_id:
            problems.append(f"{on} sees another store at {store} (store_id {r.get('store_id')}, this client's is "
                            f"{store_id}): {STORE_HINT}")
    if problems:
        raise ClusterError(f"The Dask cluster at {address} cannot run RepInt's tasks ({len(problems)} problem(s) on "
                           f"{len(results)} worker(s)):\n  - " + "\n  - ".join(problems))
    return results
