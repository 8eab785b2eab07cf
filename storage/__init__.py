"""Zarr feature store (installed as ``repint.storage``)."""

from repint.storage.store import (
    LAYOUT_VERSION,
    SECRET_MASK,
    FeatureStore,
    StoreAccessError,
    StoreError,
    fingerprint_params,
    is_secret_key,
    mask_secrets,
    protect_secrets,
    redact_url,
    reveal_secrets,
    split_url_credentials,
)

__all__ = ["LAYOUT_VERSION", "SECRET_MASK", "FeatureStore", "StoreAccessError", "StoreError", "fingerprint_params",
           "is_secret_key", "mask_secrets", "protect_secrets", "redact_url", "reveal_secrets", "split_url_credentials"]
