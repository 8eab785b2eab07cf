"""Zarr feature store (installed as ``repint.storage``)."""

from repint.storage.store import LAYOUT_VERSION, FeatureStore, StoreError, fingerprint_params

__all__ = ["LAYOUT_VERSION", "FeatureStore", "StoreError", "fingerprint_params"]
