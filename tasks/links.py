"""Where the ``repint-report`` Prefect artifact links ``report.html`` to: a link that opens from the
Prefect UI when one can be had.

A browser refuses ``file://`` links from a web page ("Not allowed to load local resource"), so:

- ``REPINT_REPORTS_URL`` (e.g. ``http://127.0.0.1:8765``): the base URL of ``repint serve ROOT``; a
  report under ``ROOT`` is linked as ``REPINT_REPORTS_URL/<its path under ROOT>``. ``ROOT`` is
  ``REPINT_REPORTS_ROOT``, by default ``runs`` (relative paths: relative to the working directory of
  the flow run, the checkout for the deployments of ``prefect.yaml``). Unset: the ``file://`` link,
  and the artifact's description says how to get a clickable one.
- A store on object storage (``store: s3://bucket/x.zarr``): the page is also published beside the
  store (``s3://bucket/x.report.html``) with the spec's ``storage_options``. With
  ``REPINT_REPORTS_PRESIGN=SECONDS`` the artifact links a presigned URL of that copy, valid for
  ``SECONDS`` (at most 7 days, S3's limit). That is opt-in because a presigned URL carries the access
  key id (and, with temporary credentials, the session token), which RepInt otherwise keeps out of
  Prefect (docs/object-storage.md). Without it the link is the served local copy (when
  ``REPINT_REPORTS_URL`` is set), else the object's URL.

Nothing here fails a run: a report whose link cannot be made better keeps the ``file://`` link and
says why (docs/operations.md, "Reports from the Prefect UI").
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, urlsplit

from repint.storage import redact_url, reveal_secrets, split_url_credentials
from repint.tasks.runspec import RunSpec

__all__ = ["DEFAULT_ROOT", "MAX_PRESIGN_S", "PRESIGN_ENV", "REPORTS_ROOT_ENV", "REPORTS_URL_ENV", "Link",
           "artifact_link", "is_remote", "presign_seconds", "publish_report", "published_url", "report_link"]

REPORTS_URL_ENV = "REPINT_REPORTS_URL"
REPORTS_ROOT_ENV = "REPINT_REPORTS_ROOT"
PRESIGN_ENV = "REPINT_REPORTS_PRESIGN"
DEFAULT_ROOT = "runs"
MAX_PRESIGN_S = 7 * 24 * 3600  # S3 signature version 4: a presigned URL lives at most 7 days

SERVE_HINT = (f"for a link that opens from the Prefect UI run `repint serve {DEFAULT_ROOT}` and set "
              f"{REPORTS_URL_ENV}=http://127.0.0.1:8765 where the flow runs (docs/operations.md)")


class Link(NamedTuple):
    """A link for the artifact and a sentence about it (for the artifact's description)."""

    url: str
    note: str


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def report_link(path: str | Path, env: Mapping[str, str] | None = None) -> Link:
    """The link to the local page ``path``: ``REPINT_REPORTS_URL`` + its path under the served root
    (``REPINT_REPORTS_ROOT``, default ``runs``) when that is set and the page lies under the root,
    else its ``file://`` URL. ``env``: the settings (default: ``os.environ``); nothing else is read."""
    env = _env(env)
    page = Path(path).resolve()
    file_link = page.as_uri()
    base = env.get(REPORTS_URL_ENV, "").strip()
    if not base:
        return Link(file_link, f"A file:// link, which browsers do not open from a web page: {SERVE_HINT}.")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return Link(file_link, f"{REPORTS_URL_ENV}={base!r} is not an http(s) URL such as http://127.0.0.1:8765, "
                               "so this is a file:// link.")
    root = Path(env.get(REPORTS_ROOT_ENV, "").strip() or DEFAULT_ROOT).resolve()
    try:
        relative = page.relative_to(root)
    except ValueError:
        return Link(file_link, f"{page} is not under {REPORTS_ROOT_ENV}={root} (what `repint serve` serves), so this "
                               "is a file:// link: set it to a folder above the report.")
    url = base.rstrip("/") + "/" + quote(relative.as_posix())
    return Link(url, f"Served by `repint serve {root}` at {base.rstrip('/')}/ (the link opens while it runs).")


def is_remote(store: str) -> bool:
    """Whether ``store`` is an fsspec URL other than ``file://`` (what ``FeatureStore`` opens remotely)."""
    return "://" in store and not store.startswith("file://")


def published_url(store: str) -> str:
    """Where the page is published beside a remote store: ``s3://bucket/x.zarr`` -> ``s3://bucket/x.report.html``."""
    base = store.rstrip("/")
    return (base[:-5] if base.endswith(".zarr") else base) + ".report.html"


def presign_seconds(env: Mapping[str, str] | None = None) -> int | None:
    """``REPINT_REPORTS_PRESIGN`` as seconds (``None``: unset or ``0``); ``ValueError`` when it is not a
    whole number from 0 to 7 days."""
    text = _env(env).get(PRESIGN_ENV, "").strip()
    if not text:
        return None
    try:
        seconds = int(text)
    except ValueError:
        raise ValueError(f"{PRESIGN_ENV}={text!r}: give the lifetime of the presigned link in seconds, e.g. "
                         "86400") from None
    if not 0 <= seconds <= MAX_PRESIGN_S:
        raise ValueError(f"{PRESIGN_ENV}={seconds}: from 1 to {MAX_PRESIGN_S} seconds (7 days), or 0 for none")
    return seconds or None


def publish_report(spec: RunSpec, path: str | Path, expires: int | None = None) -> Link:
    """Copy the page ``path`` beside the spec's remote store (:func:`published_url`) with fsspec and
    the spec's ``storage_options``; link a presigned URL valid for ``expires`` seconds (``fs.sign``),
    or, without ``expires`` or where the file system cannot sign, the object's URL (and say so).
    Errors of the upload are raised (:func:`artifact_link` turns them into a note)."""
    import fsspec

    store, options = split_url_credentials(spec.store, spec.storage_options)
    target = published_url(store)
    fs, remote_path = fsspec.core.url_to_fs(target, **reveal_secrets(options))
    fs.put_file(str(path), remote_path)  # s3fs sets Content-Type from the name: text/html
    shown = redact_url(target)
    if expires is None:
        return Link(shown, f"Published to {shown}, which a browser cannot open: set {PRESIGN_ENV}=SECONDS for a "
                           f"presigned link, or {SERVE_HINT}.")
    try:
        url = fs.sign(remote_path, expiration=expires)
    except NotImplementedError:
        return Link(shown, f"Published to {shown}; {type(fs).__name__} cannot presign URLs, so this is the object's "
                           "URL: open it with your storage's tools or console.")
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() + expires))
    return Link(str(url), f"Published to {shown}; a presigned link, valid until {until} ({expires} s).")


def artifact_link(spec: RunSpec, path: str | Path, env: Mapping[str, str] | None = None) -> Link:
    """What ``write_html_report`` links: for a local store :func:`report_link`; for a remote one the
    page is published (:func:`publish_report`) and linked presigned when ``REPINT_REPORTS_PRESIGN`` is
    set, else served (``REPINT_REPORTS_URL``), else by the object's URL. A failed upload or a bad
    setting gives the local link with a note saying what went wrong; it never fails the run."""
    local = report_link(path, env)
    if not is_remote(spec.store):
        return local
    shown, warning = redact_url(published_url(spec.store)), ""
    try:
        expires = presign_seconds(env)
    except ValueError as exc:  # a bad setting: said in the note, the page is published unsigned
        expires, warning = None, f"{exc}. "
    try:
        published = publish_report(spec, path, expires)
    except Exception as exc:  # the page is written locally already: a link is a nicety, never a failed run
        from repint.tasks.common import logger

        # the exception's name only: a message of the storage library could quote the options
        logger().warning(f"report.html could not be published to {shown}: {type(exc).__name__}")
        return Link(local.url, f"{warning}Publishing the page to {shown} failed ({type(exc).__name__}). {local.note}")
    if expires is None and local.url.startswith(("http://", "https://")):
        return Link(local.url, f"{warning}{local.note} Also published to {published.url}.")
    return Link(published.url, warning + published.note)
