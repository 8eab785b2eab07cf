"""What can go wrong with a store, and retrying what may go right the next time: the store's errors
(:class:`StoreError` and its kinds), which storage errors are transient (:func:`is_transient`), and
:func:`retrying` an idempotent store operation with exponential backoff (:class:`RetryPolicy`)."""

from __future__ import annotations

import errno
import logging
import os
import random
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["RetryPolicy", "StoreAccessError", "StoreError", "StoreLockedError", "is_transient", "retrying"]

log = logging.getLogger("repint.storage")
T = TypeVar("T")


class StoreError(RuntimeError):
    """The store is missing, incomplete for what is asked, or from an incompatible layout."""


class StoreAccessError(StoreError, ValueError):
    """The store's location cannot be used: no such bucket, credentials missing or refused, an
    endpoint that does not answer. A ``ValueError`` too, so the CLI reports it as a one-line error."""


class StoreLockedError(StoreError, ValueError):
    """Another live run holds the store's write lock. A ``ValueError`` too: one line from the CLI."""


# transient storage errors ---------------------------------------------------------------------------
# What s3fs / botocore already do (s3fs 2026.9, botocore 1.43): botocore retries 500/502/503/504,
# throttling and connection errors up to 5 attempts with exponential backoff; s3fs retries timeouts,
# dropped connections and "SlowDown" 5 more times. What still reaches the store after that (a longer
# outage, or a client configured with fewer attempts) is retried here, around each whole store
# operation (a chunk write, a read, an attrs update): every one of them is idempotent.
_TRANSIENT_ERRNOS = {errno.EBUSY, errno.EAGAIN, errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED,
                     errno.ETIMEDOUT, errno.EPIPE, getattr(errno, "EREMOTEIO", 121)}
_TRANSIENT_NAMES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                    "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "ClientPayloadError",
                    "ResponseParserError", "HTTPClientError", "IncompleteRead", "FSTimeoutError"}
_TRANSIENT_CODES = {"500", "502", "503", "504", "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                    "Throttling", "ThrottlingException", "RequestTimeTooSkewed"}


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is worth retrying: a dropped or refused connection, a
    timeout, an HTTP 5xx / SlowDown from object storage. Never a missing key, refused access, an
    existing object or a value error."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, FileNotFoundError | PermissionError | FileExistsError | IsADirectoryError
                      | NotADirectoryError):
            return False
        if isinstance(e, ConnectionError | TimeoutError) or type(e).__name__ in _TRANSIENT_NAMES:
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _TRANSIENT_CODES or status in _TRANSIENT_CODES:
                return True
        e = e.__cause__ or e.__context__
    return False


class RetryPolicy:
    """How often and how patiently a store operation is retried on a transient error: ``attempts``
    in all, waiting ``base * 2**i`` seconds (at most ``cap``, +-25% jitter) before retry ``i + 1``.
    ``REPINT_STORE_ATTEMPTS`` and ``REPINT_STORE_BACKOFF`` (the base, seconds) override the defaults."""

    def __init__(self, attempts: int | None = None, base: float | None = None, cap: float = 8.0) -> None:
        self.attempts = max(1, int(attempts if attempts is not None else os.environ.get("REPINT_STORE_ATTEMPTS", 5)))
        self.base = float(base if base is not None else os.environ.get("REPINT_STORE_BACKOFF", 0.25))
        self.cap = cap

    def delay(self, i: int) -> float:
        return min(self.cap, self.base * 2 ** i) * random.uniform(0.75, 1.25)


def retrying(what: str | Callable[[], str], fn: Callable[[], T], policy: RetryPolicy | None = None) -> T:
    """``fn()``, retried with exponential backoff while it fails with a transient error
    (:func:`is_transient`); each retry is logged (``repint.storage``) with ``what`` was being done."""
    policy = policy or RetryPolicy()
    for i in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:
            if i == policy.attempts - 1 or not is_transient(exc):
                raise
            wait = policy.delay(i)
            log.warning(f"transient storage error while {what() if callable(what) else what} "
                        f"({type(exc).__name__}: {exc}); retry {i + 1}/{policy.attempts - 1} in {wait:.2f} s")
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
