"""Transient object-storage errors, injected honestly: moto's real S3 server behind a small HTTP proxy
on 127.0.0.1 that answers chosen requests with 503 SlowDown or resets the connection. A 503 that
happens once is retried by botocore itself (and a 503 SlowDown by s3fs too); errors that outlast the client's own
retries are retried by the store (backoff, logged); the write lock works on S3 through conditional writes."""

from __future__ import annotations

import logging
import os
import uuid

import numpy as np
import pytest
from _servers import FaultyProxy
from test_s3_store import BUCKET, REGION, moto_server  # noqa: F401 (the fixture)
from test_store_reliability import CHUNK, make_store

from repint.storage import FeatureStore, StoreLock, StoreLockedError
from repint.storage.verify import verify_store


@pytest.fixture
def proxy(moto_server, monkeypatch):  # noqa: F811
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    p = FaultyProxy(moto_server["endpoint"])
    yield p
    p.close()


def _options(proxy: FaultyProxy, **config) -> dict:
    options = {"endpoint_url": proxy.endpoint, "key": "AKIAREPINTPROXY", "secret": "proxy-secret-" + "x" * 8,
               "client_kwargs": {"region_name": REGION}}
    if config:
        options["config_kwargs"] = config
    return options


def _url() -> str:
    return f"s3://{BUCKET}/faults-{uuid.uuid4().hex[:8]}.zarr"


def test_a_503_once_is_retried_by_botocore(proxy, caplog):
    url = _url()
    store = FeatureStore(url, _options(proxy))
    store.create("reference/features", (2 * CHUNK, 3), "f4", (CHUNK, 3), fill_value=0)
    proxy.fail("PUT", "/reference/features/c/1/0", [503])
    data = np.arange(CHUNK * 3, dtype=np.float32).reshape(CHUNK, 3)
    with caplog.at_level(logging.WARNING, logger="repint.storage"):
        store.write_region("reference/features", slice(CHUNK, 2 * CHUNK), data)
    assert proxy.requests("PUT", "/reference/features/c/1/0") == ["503", "200"]  # the client's own retry
    assert not [r for r in caplog.records if "transient storage error" in r.getMessage()]
    # a SlowDown, even where botocore may try only once, is retried by s3fs
    proxy.fail("PUT", "/reference/features/c/0/0", ["slowdown"])
    FeatureStore(url, _options(proxy, retries={"total_max_attempts": 1, "mode": "standard"})).write_region(
        "reference/features", slice(0, CHUNK), data)
    assert proxy.requests("PUT", "/reference/features/c/0/0") == ["slowdown", "200"]
    assert not [r for r in caplog.records if "transient storage error" in r.getMessage()]
    np.testing.assert_array_equal(FeatureStore(url, _options(proxy), mode="r").read("reference/features"),
                                  np.concatenate([data, data]))


def test_errors_beyond_the_clients_retries_are_retried_by_the_store(proxy, caplog):
    """With botocore allowed a single attempt, a chunk write that meets two 503s, a read that meets
    a 503 and an attributes update that meets one all succeed through the store's backoff."""
    url = _url()
    options = _options(proxy, retries={"total_max_attempts": 1, "mode": "standard"})
    store = FeatureStore(url, options)
    store.retry.base = 0.05
    store.create("signs/reference", (2 * CHUNK, 2), "u1", (CHUNK, 2), fill_value=0)
    proxy.fail("PUT", "/signs/reference/c/0/0", [503, 503])
    proxy.fail("GET", "/signs/reference/c/0/0", [503])
    proxy.fail("PUT", url.split(BUCKET, 1)[1] + "/zarr.json", [503])
    bits = np.full((CHUNK, 2), 7, np.uint8)
    with caplog.at_level(logging.WARNING, logger="repint.storage"):
        store.write_region("signs/reference", slice(0, CHUNK), bits)
        np.testing.assert_array_equal(store.read("signs/reference", slice(0, CHUNK)), bits)
        store.set_attrs(note="after a 503")
    assert proxy.requests("PUT", "/signs/reference/c/0/0") == ["503", "503", "200"]
    assert proxy.requests("GET", "/signs/reference/c/0/0") == ["503", "200"]
    retries = [r.getMessage() for r in caplog.records if "transient storage error" in r.getMessage()]
    assert len(retries) == 4, retries
    assert any("while writing signs/reference[0:8]" in m and "retry 1/4" in m for m in retries), retries
    assert any("while updating the store's attributes" in m for m in retries), retries
    assert FeatureStore(url, options, mode="r").attrs["note"] == "after a 503"


def test_a_reset_connection_is_retried(proxy):
    url = _url()
    store = FeatureStore(url, _options(proxy, retries={"total_max_attempts": 1, "mode": "standard"}))
    store.retry.base = 0.05
    store.create("x", (4,), "i8", (2,), fill_value=0)
    proxy.fail("PUT", "/x/c/1", ["reset"])
    proxy.fail("GET", "/x/c/1", ["reset", "reset"])
    store.write_region("x", slice(2, 4), np.array([5, 6]))
    assert store.read("x").tolist() == [0, 0, 5, 6]
    assert proxy.requests("PUT", "/x/c/1")[:2] == ["reset", "200"]
    assert proxy.requests("GET", "/x/c/1")[:3] == ["reset", "reset", "200"]


def test_lock_and_verify_on_s3(proxy):
    url, options = _url(), _options(proxy)
    key = "/" + url.split(BUCKET + "/", 1)[1] + "/_lock/zarr.json"
    lock = StoreLock(url, options).acquire()
    try:
        assert proxy.requests("PUT", key) == ["200"]
        with pytest.raises(StoreLockedError, match=f"The store {url} is being written by another run: .*pid "
                                                   f"{os.getpid()}"):
            StoreLock(url, options).acquire()
        # refused by S3's conditional write (If-None-Match: *), which answered 412
        assert proxy.requests("PUT", key) == ["200", "412"]
    finally:
        lock.release()
    assert proxy.requests("DELETE", key) == ["204"]

    # the synthetic store of test_store_reliability, on S3: sound, then with a corrupted chunk
    make_store(url, options)
    assert verify_store(url, options).ok
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=proxy.endpoint, key="k", secret="s", client_kwargs={"region_name": REGION})
    fs.pipe_file(url[len("s3://"):] + "/reference/features/c/2/0/0/0", b"garbage")
    report = verify_store(url, options)
    assert [(f.path, f.chunk) for f in report.errors] == [("reference/features", (2, 0, 0, 0))], report.text()
