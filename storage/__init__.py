"""Zarr feature store (installed as ``repint.storage``): the façade of its modules.

:mod:`~repint.storage.layout` (every stage and its arrays, declared once),
:mod:`~repint.storage.store` (:class:`FeatureStore`), :mod:`~repint.storage.lock` (the write lock),
:mod:`~repint.storage.errors` (errors and retries), :mod:`~repint.storage.secrets` (credentials),
:mod:`~repint.storage.access` (why a remote store cannot be opened), :mod:`~repint.storage.verify`
(``repint verify``).

Layer 2: imports only the core, never Prefect, Dask, ``repint.tasks``, ``repint.flows`` or
``repint.app`` (tests/test_layering.py)."""

from repint.storage.errors import RetryPolicy, StoreAccessError, StoreError, StoreLockedError, is_transient, retrying
from repint.storage.layout import STAGES, ArraySpec, Stage, StageKind, parse_stage, stage_of
from repint.storage.lock import StoreLock
from repint.storage.secrets import (
    SECRET_MASK,
    is_secret_key,
    mask_secrets,
    protect_secrets,
    redact_url,
    reveal_secrets,
    split_url_credentials,
)
from repint.storage.store import FAST_COMPRESSORS, LAYOUT_VERSION, FeatureStore, fingerprint_params

__all__ = [
    # the store
    "FAST_COMPRESSORS", "LAYOUT_VERSION", "FeatureStore", "StoreLock", "fingerprint_params",
    # errors and retries
    "RetryPolicy", "StoreAccessError", "StoreError", "StoreLockedError", "is_transient", "retrying",
    # the layout (its stage kinds, INGEST ... EVALUATE, in repint.storage.layout)
    "STAGES", "ArraySpec", "Stage", "StageKind", "parse_stage", "stage_of",
    # credentials
    "SECRET_MASK", "is_secret_key", "mask_secrets", "protect_secrets", "redact_url", "reveal_secrets",
    "split_url_credentials",
]
