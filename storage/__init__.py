"""Zarr feature store (installed as ``repint.storage``)."""

from repint.storage.store import (
    LAYOUT_VERSION,
    SECRET_MASK,
    FeatureStore,
    RetryPolicy,
    StoreAccessError,
    StoreError,
    StoreLock,
    StoreLockedError,
    fingerprint_params,
    is_secret_key,
    is_transient,
    mask_secrets,
    protect_secrets,
    redact_url,
    retrying,
    reveal_secrets,
    split_url_credentials,
    stage_of,
)

__all__ = ["LAYOUT_VERSION", "SECRET_MASK", "FeatureStore", "RetryPolicy", "StoreAccessError", "StoreError",
           "StoreLock", "StoreLockedError", "fingerprint_params", "is_secret_key", "is_transient", "mask_secrets",
           "protect_secrets", "redact_url", "retrying", "reveal_secrets", "split_url_credentials", "stage_of"]
