"""Credentials in storage options and store URLs: kept as pydantic secrets wherever a run spec is
serialised (Prefect parameters, artifacts, logs), revealed only to fsspec, redacted wherever printed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from pydantic import SecretStr

try:  # pydantic >= 2.7: a secret of any type (e.g. a token given as a dict)
    from pydantic import Secret
except ImportError:  # pragma: no cover
    Secret = None  # type: ignore[assignment,misc]

__all__ = ["SECRET_MASK", "is_secret_key", "mask_secrets", "protect_secrets", "redact_url", "reveal_secrets",
           "split_url_credentials"]

SECRET_MASK = "**********"  # what pydantic shows for a SecretStr
_SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "credential", "auth", "signature",
                 "connection_string")
# scheme://user[:password]@ -- the user part cannot hold "/" or "@", the password cannot hold "@"
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@]+(?::[^\s@]*)?@")
_S3_USERINFO = re.compile(r"(?i)^(s3a?://)([^/@:]*)(?::([^@]*))?@(.*)$")


def is_secret_key(name: str) -> bool:
    """Whether an option called ``name`` holds a credential: ``key``, ``secret``, ``token``,
    ``password``, ``aws_secret_access_key``, ``aws_session_token``, ``account_key``, ..."""
    name = str(name).lower()
    return any(word in name for word in _SECRET_WORDS)


def _is_secret(value: Any) -> bool:
    return isinstance(value, SecretStr) or (Secret is not None and isinstance(value, Secret))


def redact_url(text: str) -> str:
    """``text`` with the user info of every URL in it (``s3://KEY:SECRET@bucket``) replaced by the mask."""
    return _USERINFO.sub(lambda m: f"{m.group(1)}{SECRET_MASK}@", str(text))


def protect_secrets(value: Any, key: str | None = None) -> Any:
    """A copy of ``value`` (storage options, nested dicts such as ``client_kwargs``) in which every
    credential is a pydantic ``SecretStr`` (``Secret`` for non-strings): the value of each key that
    :func:`is_secret_key`, and any string holding a URL with user info."""
    if _is_secret(value):
        return value
    if key is not None and is_secret_key(key) and value is not None and not isinstance(value, bool):
        if isinstance(value, str):
            return SecretStr(value)
        if Secret is not None:
            return Secret(value)
    if isinstance(value, Mapping):
        return {k: protect_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(protect_secrets(v) for v in value)
    if isinstance(value, str) and redact_url(value) != value:
        return SecretStr(value)
    return value


def reveal_secrets(value: Any) -> Any:
    """The real values behind :func:`protect_secrets`: what fsspec is given, and nothing else."""
    if _is_secret(value):
        return value.get_secret_value()
    if isinstance(value, Mapping):
        return {k: reveal_secrets(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(reveal_secrets(v) for v in value)
    return value


def mask_secrets(value: Any) -> Any:
    """A JSON-able copy of ``value`` with every credential replaced by ``**********``."""
    value = protect_secrets(value)
    if _is_secret(value):
        return SECRET_MASK
    if isinstance(value, Mapping):
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_secrets(v) for v in value]
    return value


def split_url_credentials(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``s3://KEY:SECRET@bucket/path`` -> (``s3://bucket/path``, options with ``key``/``secret``).

    Credentials in ``storage_options`` win over those in the URL. Other schemes keep their user info
    (fsspec's FTP, SFTP and HTTP file systems read it); it is redacted wherever the URL is printed."""
    options = dict(storage_options or {})
    m = _S3_USERINFO.match(url)
    if not m:
        return url, options
    scheme, key, secret, rest = m.groups()
    if key:
        options.setdefault("key", SecretStr(unquote(key)))
    if secret:
        options.setdefault("secret", SecretStr(unquote(secret)))
    return scheme + rest, options
