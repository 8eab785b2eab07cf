"""``repint serve RUNS_DIR``: the reports under a runs folder over HTTP, read only, so that the Prefect
UI's ``repint-report`` link opens (a browser refuses ``file://`` links from a web page).

- ``/`` lists the runs under ``RUNS_DIR``: every folder holding a ``report.html``, and every folder of
  versions written by ``repint reinterpret`` / the ``reinterpret`` deployment (``OUT/versions.json``,
  ``OUT/v0001/report.html``, ...; layout: :mod:`repint.tasks.versions`), newest version first.
- ``/PATH`` is the file ``RUNS_DIR/PATH``: GET and HEAD only (others: 405), regular files only, never
  outside ``RUNS_DIR`` (``..``, hidden names and symlinks that lead out are refused with 403), no
  directory listings (a folder with a ``report.html`` redirects to it).

Bound to 127.0.0.1 by default. ``REPINT_REPORTS_URL`` (tasks/links.py) makes the artifacts link here.
"""

from __future__ import annotations

import contextlib
import html
import ipaddress
import json
import mimetypes
import os
import re
import shutil
import signal
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

__all__ = ["CONTENT_TYPES", "ReportsServer", "Run", "Version", "find_runs", "index_page", "make_server", "serve"]

REPORT = "report.html"
VERSIONS_INDEX = "versions.json"  # repint.tasks.versions.INDEX (not imported: it pulls in torch, seconds)
VERSION_DIR = re.compile(r"^v\d{4}$")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8", ".png": "image/png",
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml", ".json": "application/json",
    ".csv": "text/csv; charset=utf-8", ".md": "text/markdown; charset=utf-8", ".txt": "text/plain; charset=utf-8",
    ".log": "text/plain; charset=utf-8", ".yaml": "text/plain; charset=utf-8", ".yml": "text/plain; charset=utf-8",
}


def _content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in CONTENT_TYPES:
        return CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@dataclass
class Version:
    """One version of a versioned output: ``OUT/vNNNN``."""

    number: int
    created: str  # the index's time (UTC), or the folder's for an unlisted version
    listed: bool  # in versions.json: complete; else in progress or left by a run that died
    report: str | None  # the page's path under the root (posix), if there is one
    drift: str | None = None  # drift.md against the version before
    changed: list[str] = field(default_factory=list)


@dataclass
class Run:
    """A folder under the root with a ``report.html`` and/or versions."""

    path: str  # under the root, posix ("." for the root itself)
    report: str | None
    modified: str | None
    versions: list[Version] = field(default_factory=list)
    problem: str | None = None  # e.g. an unreadable versions.json


def _read_versions(folder: Path) -> tuple[dict[int, dict[str, Any]], str | None]:
    path = folder / VERSIONS_INDEX
    if not path.is_file():
        return {}, None
    try:
        entries = json.loads(path.read_text())["versions"]
        return {int(v["version"]): v for v in entries}, None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {}, f"{VERSIONS_INDEX} is not a RepInt versions index ({type(exc).__name__})"


def _versions(root: Path, folder: Path, names: list[str]) -> tuple[list[Version], str | None]:
    listed, problem = _read_versions(folder)
    numbers = set(listed) | {int(n[1:]) for n in names if VERSION_DIR.match(n) and (folder / n).is_dir()}
    found = []
    for n in sorted(numbers, reverse=True):  # newest first
        sub = folder / f"v{n:04d}"
        page, drift = sub / REPORT, sub / "drift.md"
        entry = listed.get(n)
        created = str(entry.get("created")) if entry and entry.get("created") else (
            _utc(sub.stat().st_mtime) if sub.is_dir() else "?")
        found.append(Version(number=n, created=created, listed=entry is not None,
                             report=page.relative_to(root).as_posix() if page.is_file() else None,
                             drift=drift.relative_to(root).as_posix() if drift.is_file() else None,
                             changed=[str(c) for c in (entry or {}).get("changed") or []]))
    return found, problem


def find_runs(root: str | Path) -> list[Run]:
    """The runs under ``root``, by path: folders with a ``report.html`` or versions. Stores
    (``*.zarr``), hidden folders and symlinked folders are not walked into."""
    root = Path(root).resolve()
    runs = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        folder = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.endswith(".zarr"))
        has_versions = VERSIONS_INDEX in filenames or any(VERSION_DIR.match(d) for d in dirnames)
        versions, problem = _versions(root, folder, dirnames) if has_versions else ([], None)
        if has_versions:  # the version folders are listed with their parent, not as runs of their own
            dirnames[:] = [d for d in dirnames if not VERSION_DIR.match(d)]
        page = folder / REPORT
        has_page = REPORT in filenames and page.is_file()
        if has_page or versions or problem:
            runs.append(Run(path=folder.relative_to(root).as_posix(),
                            report=page.relative_to(root).as_posix() if has_page else None,
                            modified=_utc(page.stat().st_mtime) if has_page else None,
                            versions=versions, problem=problem))
    return sorted(runs, key=lambda r: r.path)


def _href(relative: str) -> str:
    return "/" + quote(relative)


def index_page(root: str | Path) -> str:
    """The page at ``/``: every run under ``root`` with links to its report and versions."""
    root = Path(root).resolve()
    runs = find_runs(root)
    e = html.escape
    rows = []
    for run in runs:
        name = e(run.path if run.path != "." else root.name or str(root))
        head = f'<a href="{e(_href(run.report))}">{name}</a>' if run.report else name
        info = f" <span class=t>{e(run.modified)}</span>" if run.modified else ""
        items = []
        for v in run.versions:
            label = f"v{v.number:04d}"
            link = f'<a href="{e(_href(v.report))}">{label}</a>' if v.report else f"{label} (no report yet)"
            drift = f' · <a href="{e(_href(v.drift))}">drift.md</a>' if v.drift else ""
            changed = f" <span class=t>(changed: {e(', '.join(v.changed))})</span>" if v.changed else (
                " <span class=t>(forced: nothing changed)</span>" if v.listed else "")
            unlisted = "" if v.listed else " <span class=n>(not listed: in progress, or left by a run that died)</span>"
            items.append(f"<li>{link} <span class=t>{e(v.created)}</span>{drift}{changed}{unlisted}</li>")
        problem = f"<p class=n>{e(run.problem)}</p>" if run.problem else ""
        versions = f"<ul>{''.join(items)}</ul>" if items else ""
        rows.append(f"<li>{head}{info}{problem}{versions}</li>")
    body = (f"<ul class=runs>{''.join(rows)}</ul>" if rows else
            f"<p>No <code>{REPORT}</code> under {e(str(root))} yet: runs write one into their output folder.</p>")
    return ("<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>RepInt reports</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}li{margin:.3em 0}"
            ".t{color:#666;font-size:.9em}.n{color:#a33;font-size:.9em}ul.runs>li{margin:.8em 0}</style></head>"
            f"<body><h1>RepInt reports</h1><p class=t>{e(str(root))}: {len(runs)} run(s), "
            f"newest version first</p>{body}</body></html>\n")


class ReportsHandler(BaseHTTPRequestHandler):
    """GET / HEAD of the files under the server's root; the index at ``/``."""

    server: ReportsServer
    server_version = "repint-serve"

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the command prints its URL and nothing per request

    def _send(self, status: HTTPStatus, body: bytes, content_type: str = "text/plain; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: HTTPStatus, why: str) -> None:
        self._send(status, f"{status.value} {status.phrase}: {why}\n".encode())

    def _refuse(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "this server is read only (GET and HEAD)")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # the rest: 501 from the base class

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        root = self.server.root
        raw = urlsplit(self.path).path
        if raw in ("", "/"):
            self._send(HTTPStatus.OK, index_page(root).encode(), CONTENT_TYPES[".html"])
            return
        parts = unquote(raw).split("/")[1:]
        if any(p.startswith(".") or "\\" in p or "\0" in p for p in parts):  # "..", ".", hidden names
            self._error(HTTPStatus.FORBIDDEN, "not a path under the served folder")
            return
        target = root.joinpath(*[p for p in parts if p])
        try:
            real = target.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            self._error(HTTPStatus.NOT_FOUND, "no such file")
            return
        if real != root and root not in real.parents:  # a symlink that leads out of the root
            self._error(HTTPStatus.FORBIDDEN, "outside the served folder")
            return
        if real.is_dir():
            if (real / REPORT).is_file():
                location = _href((real.relative_to(root) / REPORT).as_posix())
                self._send(HTTPStatus.FOUND, b"", headers={"Location": location})
            else:
                self._error(HTTPStatus.NOT_FOUND, "a folder (no listings; / lists the reports)")
            return
        self._file(real)

    def _file(self, real: Path) -> None:
        try:  # O_NOFOLLOW: the resolved path is opened, never a symlink swapped in since
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            self._error(HTTPStatus.NOT_FOUND, "no such file")
            return
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                self._error(HTTPStatus.NOT_FOUND, "not a regular file")
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", _content_type(real))
            self.send_header("Content-Length", str(info.st_size))
            self.send_header("Last-Modified", self.date_time_string(int(info.st_mtime)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if self.command != "HEAD":
                shutil.copyfileobj(f, self.wfile)


class ReportsServer(ThreadingHTTPServer):
    """A :class:`ThreadingHTTPServer` that serves :attr:`root` with :class:`ReportsHandler`."""

    daemon_threads = True

    def __init__(self, root: Path, address: tuple[str, int]) -> None:
        self.root = root
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(address[0]).version == 6:
                self.address_family = socket.AF_INET6
        super().__init__(address, ReportsHandler)


def make_server(root: str | Path, host: str = "127.0.0.1", port: int = 8765) -> ReportsServer:
    """A server of the reports under ``root`` (an existing folder) on ``host:port`` (``0``: a free port)."""
    folder = Path(root).resolve()
    if not folder.is_dir():
        raise NotADirectoryError(f"RUNS_DIR {root} is not a folder: give the folder the runs write into (e.g. runs)")
    return ReportsServer(folder, (host, port))


def _url(server: ReportsServer) -> str:
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else str(host)
    return f"http://{shown}:{port}/"


def serve(root: str | Path, host: str = "127.0.0.1", port: int = 8765) -> int:
    """Serve until Ctrl-C (or SIGTERM); prints one line with the URL; returns the exit code 0."""
    try:
        server = make_server(root, host, port)
    except NotADirectoryError:
        raise
    except OSError as exc:  # the port is taken, or the host is not an address of this machine
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; give another --port or --host") \
            from None
    loopback = host == "localhost" or _is_loopback(host)
    warning = "" if loopback else f" (reachable from other machines on {host}: the reports are not protected)"
    print(f"repint serve: {server.root} at {_url(server)} (Ctrl-C stops){warning}", flush=True)
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C stops it even where SIGINT was inherited ignored (a background job); SIGTERM alike
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
