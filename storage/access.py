"""Why a store on object storage cannot be opened, said clearly: no such bucket, credentials missing
or refused, an endpoint that does not answer (:func:`_access_error`), with any secret scrubbed from
the message (:func:`_scrub`). Used by :class:`repint.storage.FeatureStore` when it opens a store."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from repint.storage.errors import StoreAccessError
from repint.storage.secrets import SECRET_MASK, _is_secret, protect_secrets, redact_url, reveal_secrets

__all__: list[str] = []  # internal to repint.storage


def _endpoint(options: Mapping[str, Any]) -> str:
    """The S3 endpoint the options (or the environment) point at, redacted, for messages."""
    ep = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url") \
        or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return redact_url(str(reveal_secrets(ep))) if ep else "AWS S3"


def _credential_source(options: Mapping[str, Any]) -> str:
    """Where the credentials in use come from, in words."""
    client = options.get("client_kwargs") or {}
    if options.get("anon"):
        return "anonymous access (anon: true)"
    if options.get("key") or options.get("secret") or client.get("aws_access_key_id"):
        return "the credentials in storage_options"
    if options.get("profile"):
        return f"the AWS profile {options['profile']!r}"
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return "the credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    return "the credentials botocore found (AWS_PROFILE, ~/.aws, instance role)"


def _error_code(exc: BaseException) -> str:
    """The S3 error code and message of ``exc`` (or what caused it), else its type and text."""
    for e in (exc, exc.__cause__, exc.__context__):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            err = response.get("Error", {})
            code = err.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code:
                return f"{code}: {err.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def _bucket_missing(url: str, options: Mapping[str, Any]) -> bool:
    """Whether the URL's S3 bucket does not exist (HEAD bucket answers 404). False when it exists or
    when that cannot be told (no permission to list it, another protocol)."""
    if not re.match(r"(?i)^s3a?://", url):
        return False
    try:
        import fsspec

        fs = fsspec.filesystem("s3", **options)
        fs.call_s3("head_bucket", Bucket=url.split("://", 1)[1].split("/", 1)[0])
    except FileNotFoundError:
        return True
    except Exception:
        return False
    return False


def _access_error(url: str, shown: str, options: Mapping[str, Any], exc: BaseException) -> StoreAccessError | None:
    """A clear :class:`StoreAccessError` for why a remote store cannot be opened, or None when
    ``exc`` is not about reaching it."""
    s3 = bool(re.match(r"(?i)^s3a?://", url))
    name = type(exc).__name__
    if isinstance(exc, FileNotFoundError) and _bucket_missing(url, options):
        bucket = url.split("://", 1)[1].split("/", 1)[0]
        return StoreAccessError(
            f"The bucket {bucket!r} of the store {shown} does not exist at {_endpoint(options)}. Create it first "
            f"(`aws s3 mb s3://{bucket}`, MinIO: `mc mb ALIAS/{bucket}`) or fix `store:` in the config "
            "(and `endpoint_url` for an S3-compatible server).")
    if isinstance(exc, PermissionError):
        where = f" at {_endpoint(options)}" if s3 else ""
        return StoreAccessError(
            f"Access to the store {shown}{where} was refused ({_error_code(exc)}) for {_credential_source(options)}. "
            "Check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, and AWS_SESSION_TOKEN for temporary "
            "ones, in the environment; or storage_options key / secret / token) and that they may read and write "
            "this bucket and prefix.")
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return StoreAccessError(
            f"No credentials for the store {shown}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment "
            "(or AWS_PROFILE), or storage_options key / secret (e.g. `key: ${AWS_ACCESS_KEY_ID}`); a public bucket "
            "needs `anon: true`.")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError") \
            or isinstance(exc, ConnectionError | TimeoutError):
        return StoreAccessError(
            f"Cannot reach the store {shown}" + (f" at {_endpoint(options)}" if s3 else "") + f" ({name}). Is the "
            "server running, and is the endpoint right (storage_options endpoint_url, or AWS_ENDPOINT_URL)?")
    return None


def _scrub(message: str, options: Mapping[str, Any]) -> str:
    """``message`` without any secret value of ``options`` and without URL user info."""
    def secrets(value: Any) -> Iterable[str]:
        if _is_secret(value):
            real = value.get_secret_value()
            if isinstance(real, str) and len(real) >= 6:  # shorter ones are no secret, only noise to replace
                yield real
        elif isinstance(value, Mapping):
            for v in value.values():
                yield from secrets(v)
        elif isinstance(value, list | tuple):
            for v in value:
                yield from secrets(v)

    for secret in sorted(secrets(protect_secrets(options)), key=len, reverse=True):
        message = message.replace(secret, SECRET_MASK)
    return redact_url(message)
