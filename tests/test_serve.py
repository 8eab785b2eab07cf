"""``repint serve RUNS_DIR`` as a real subprocess on 127.0.0.1, and the links the ``repint-report``
artifact gets (tasks/links.py): a served http URL, a presigned URL of a copy published beside a store on
moto's real S3 server, the ``file://`` link and what its description says otherwise."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from _servers import free_port, start, stop
from test_s3_store import BUCKET, REGION, env_credentials, moto_server  # noqa: F401 (the fixtures)

from repint.tasks.links import (
    PRESIGN_ENV,
    REPORTS_ROOT_ENV,
    REPORTS_URL_ENV,
    artifact_link,
    presign_seconds,
    publish_report,
    published_url,
    report_link,
)
from repint.tasks.runspec import RunSpec

OUTSIDE_SECRET = b"outside-the-runs-folder-" + uuid.uuid4().hex.encode()
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


# the runs folder and the server ---------------------------------------------------------------------
def make_runs(root: Path) -> dict[str, bytes]:
    """Two fake runs under ``root``: ``demo`` (report.html and its files) and ``reinterpret/digits``
    (versions v0001, v0002 listed in versions.json, v0003 unlisted). Returns {path: bytes} of the pages."""
    files = {
        "demo/report.html": "<!doctype html><title>demo</title><p>demo report ✓</p>".encode(),
        "demo/interpretation-0.png": PNG,
        "demo/summary.json": b'{"dataset": "digits"}',
        "demo/records.csv": b"index,id\n0,a\n",
        "reinterpret/digits/v0001/report.html": b"<p>version one</p>",
        "reinterpret/digits/v0002/report.html": b"<p>version two</p>",
        "reinterpret/digits/v0002/drift.md": b"# Drift 1 -> 2\n",
        "reinterpret/digits/v0003/report.html": b"<p>version three, unlisted</p>",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    index = {"versions": [{"version": 1, "created": "2026-01-01T10:00:00Z", "changed": ["model", "data", "settings"]},
                          {"version": 2, "created": "2026-01-02T11:00:00Z", "changed": ["model"]}]}
    (root / "reinterpret/digits/versions.json").write_text(json.dumps(index))
    (root / "demo/store.zarr/reference").mkdir(parents=True)  # a store is not walked into
    (root / "demo/store.zarr/reference/report.html").write_bytes(b"not a run")
    outside = root.parent / "outside.txt"
    outside.write_bytes(OUTSIDE_SECRET)
    (root / "demo/leak.html").symlink_to(outside)  # symlinks out of the root are refused
    (root / "etc").symlink_to("/etc", target_is_directory=True)
    return {k: v for k, v in files.items() if k.endswith("report.html")}


def start_serve(runs: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``repint serve RUNS --port FREE`` (the CLI's module, this interpreter); waits for its URL line."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = start([sys.executable, "-m", "repint.app.cli", "serve", str(runs), "--port", str(port)], log, env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = re.search(r"http://[^\s]+/", text)
        if found:
            return proc, found.group(0)
        if proc.poll() is not None:
            raise RuntimeError(f"repint serve exited with {proc.returncode}: {text[-2000:]}")
        time.sleep(0.1)
    stop(proc)
    raise TimeoutError(f"repint serve printed no URL: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for the module's requests, over two fake runs; stopped by its PID."""
    base = tmp_path_factory.mktemp("serve")
    runs = base / "runs"
    runs.mkdir()
    pages = make_runs(runs)
    log = base / "serve.log"
    proc, url = start_serve(runs, log)
    try:
        yield {"url": url, "runs": runs, "pages": pages, "proc": proc, "log": log}
    finally:
        stop(proc)


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request, the path sent exactly as given (no normalisation): (status, headers, body)."""
    parts = urllib.request.urlparse(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest(method, parts.path + (f"?{parts.query}" if parts.query else ""), skip_accept_encoding=True)
        if method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", "0")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# the server -----------------------------------------------------------------------------------------
def test_index_lists_runs_and_versions_and_links_resolve(served):
    """/ lists both runs and every version, newest first with its time; every link answers 200 with the
    file's bytes; a store's folder is not a run."""
    status, headers, body = get(served["url"])
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert "demo" in page and "reinterpret/digits" in page
    assert "store.zarr" not in page
    v3, v2, v1 = (page.index(f"v000{n}") for n in (3, 2, 1))
    assert v3 < v2 < v1  # newest first
    assert "2026-01-02T11:00:00Z" in page and "2026-01-01T10:00:00Z" in page  # the index's times
    assert "not listed" in page[v3:v2] and "not listed" not in page[v2:]
    assert "changed: model" in page[v2:v1]
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert sorted(h for h in hrefs if h.endswith("report.html")) == sorted("/" + p for p in served["pages"])
    assert "/reinterpret/digits/v0002/drift.md" in hrefs
    for href in hrefs:
        status, headers, body = get(served["url"].rstrip("/") + href)
        assert status == 200, href
        assert body == (served["runs"] / href.lstrip("/")).read_bytes(), href


@pytest.mark.parametrize(("path", "content_type"), [
    ("demo/report.html", "text/html; charset=utf-8"), ("demo/interpretation-0.png", "image/png"),
    ("demo/summary.json", "application/json"), ("demo/records.csv", "text/csv; charset=utf-8"),
    ("reinterpret/digits/v0002/drift.md", "text/markdown; charset=utf-8"),
    ("reinterpret/digits/versions.json", "application/json")])
def test_files_with_their_content_types(served, path, content_type):
    status, headers, body = get(served["url"] + path)
    assert status == 200 and headers["content-type"] == content_type
    assert body == (served["runs"] / path).read_bytes()
    assert int(headers["content-length"]) == len(body)
    status, headers, body = get(served["url"] + path, "HEAD")  # HEAD: the headers, no body
    assert status == 200 and body == b"" and int(headers["content-length"]) == (served["runs"] / path).stat().st_size


def test_a_folder_redirects_to_its_report(served):
    status, headers, _ = get(served["url"] + "demo")
    assert status == 302 and headers["location"] == "/demo/report.html"
    assert get(served["url"] + "reinterpret")[0] == 404  # no listings


@pytest.mark.parametrize("path", [
    "/../etc/passwd", "/%2e%2e/etc/passwd", "/%2E%2E/%2e%2e/etc/passwd", "/demo/../../outside.txt",
    "/demo/%2e%2e/%2e%2e/outside.txt", "/demo/..%2f..%2foutside.txt", "/demo/leak.html", "/etc/passwd",
    "/etc/", "/demo/%00report.html", "/reinterpret/digits/.versions.json.1.tmp", "//etc/passwd",
    "/demo%2f..%2f..%2foutside.txt"])
def test_nothing_outside_the_root(served, path):
    """Traversal (plain and percent-encoded), symlinks out of the root and hidden names: 403 or 404,
    never the outside file's bytes."""
    status, _, body = get(served["url"].rstrip("/") + path)
    assert status in (403, 404), (path, status)
    assert OUTSIDE_SECRET not in body and b"root:" not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_read_only(served, method):
    """Anything but GET and HEAD is refused (405, or 501 for methods it does not know) and writes nothing."""
    before = {p: p.read_bytes() for p in served["runs"].rglob("*") if p.is_file() and not p.is_symlink()}
    status, _, _ = get(served["url"] + "demo/report.html", method)
    assert status in (405, 501), (method, status)
    status, _, _ = get(served["url"] + "new.html", method)
    assert status in (405, 501)
    after = {p: p.read_bytes() for p in served["runs"].rglob("*") if p.is_file() and not p.is_symlink()}
    assert after == before


def _listening(port: int) -> list[str]:
    """The local addresses of the sockets listening on ``port`` (Linux: /proc/net/tcp, tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hexport = local.rsplit(":", 1)
                if state == "0A" and int(hexport, 16) == port:
                    found.append(address)
    return found


def _other_address() -> str | None:
    """An address of this machine other than loopback, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # a UDP "connect" sends nothing; it picks the outgoing address
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_binds_loopback_only(served):
    """The URL it prints is 127.0.0.1, its only listening socket is on 127.0.0.1, and the machine's other
    address does not answer."""
    port = int(served["url"].rsplit(":", 1)[1].strip("/"))
    assert served["url"] == f"http://127.0.0.1:{port}/"
    assert served["log"].read_text().count("http://") == 1  # one line with its URL
    if sys.platform.startswith("linux"):
        assert _listening(port) == ["0100007F"]  # 127.0.0.1, little-endian hex
    other = _other_address()
    if other:
        with pytest.raises(OSError), socket.create_connection((other, port), timeout=3):
            pass


def test_sigint_stops_with_exit_code_0(tmp_path):
    """Ctrl-C (SIGINT to its PID): exit code 0 within a few seconds, no traceback, the port free again."""
    runs = tmp_path / "runs"
    runs.mkdir()
    make_runs(runs)
    log = tmp_path / "serve.log"
    proc, url = start_serve(runs, log)
    try:
        assert get(url)[0] == 200
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 5
        assert "Traceback" not in log.read_text()
        port = int(url.rsplit(":", 1)[1].strip("/"))
        if sys.platform.startswith("linux"):
            assert _listening(port) == []
        with socket.socket() as s:  # released: another server may listen there (closed connections aside)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()
    finally:
        stop(proc)


def test_serve_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    from repint.app.cli import main

    assert main(["serve", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("repint serve: error:") and "nope" in err[0]


# report_link ----------------------------------------------------------------------------------------
def test_report_link_without_settings_is_file_uri_with_a_hint(tmp_path):
    page = tmp_path / "out" / "report.html"
    link = report_link(page, env={})
    assert link.url == page.resolve().as_uri() and link.url.startswith("file://")
    assert "repint serve" in link.note and REPORTS_URL_ENV in link.note


def test_report_link_served(tmp_path):
    root = tmp_path / "runs"
    page = root / "reinterpret" / "my digits" / "v0002" / "report.html"
    env = {REPORTS_URL_ENV: "http://127.0.0.1:8765/", REPORTS_ROOT_ENV: str(root)}
    link = report_link(page, env)
    assert link.url == "http://127.0.0.1:8765/reinterpret/my%20digits/v0002/report.html"
    assert "repint serve" in link.note
    prefixed = report_link(page, {**env, REPORTS_URL_ENV: "https://reports.example/repint"})
    assert prefixed.url == "https://reports.example/repint/reinterpret/my%20digits/v0002/report.html"


def test_report_link_default_root_is_runs_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    link = report_link(Path("runs/demo/report.html"), {REPORTS_URL_ENV: "http://127.0.0.1:9000"})
    assert link.url == "http://127.0.0.1:9000/demo/report.html"


def test_report_link_outside_the_root_or_a_bad_url_stays_a_file_link(tmp_path):
    page = tmp_path / "elsewhere" / "report.html"
    outside = report_link(page, {REPORTS_URL_ENV: "http://127.0.0.1:8765", REPORTS_ROOT_ENV: str(tmp_path / "runs")})
    assert outside.url == page.resolve().as_uri() and REPORTS_ROOT_ENV in outside.note
    bad = report_link(page, {REPORTS_URL_ENV: "127.0.0.1:8765", REPORTS_ROOT_ENV: str(tmp_path)})
    assert bad.url == page.resolve().as_uri() and "not an http(s) URL" in bad.note


def test_report_link_opens_on_the_server(served):
    """The URL report_link makes for a page under the served root is the page, on the real server."""
    rel = "reinterpret/digits/v0002/report.html"
    link = report_link(served["runs"] / rel, {REPORTS_URL_ENV: served["url"], REPORTS_ROOT_ENV: str(served["runs"])})
    with urllib.request.urlopen(link.url, timeout=10) as r:
        assert r.status == 200 and r.read() == served["pages"][rel]


def test_presign_setting_and_published_url():
    assert presign_seconds({}) is None and presign_seconds({PRESIGN_ENV: "0"}) is None
    assert presign_seconds({PRESIGN_ENV: " 3600 "}) == 3600
    for bad in ("an hour", "-1", str(8 * 24 * 3600)):
        with pytest.raises(ValueError, match=PRESIGN_ENV):
            presign_seconds({PRESIGN_ENV: bad})
    assert published_url("s3://bucket/x.zarr") == "s3://bucket/x.report.html"
    assert published_url("s3://bucket/a/x.zarr/") == "s3://bucket/a/x.report.html"
    assert published_url("gs://bucket/store") == "gs://bucket/store.report.html"


# publishing beside a store on object storage ---------------------------------------------------------
def _spec(store: str, out: Path, **options) -> RunSpec:
    return RunSpec(store=store, storage_options=options, out_dir=str(out), dataset="digits", reference={},
                   unseen={}, model={})


def _page(tmp_path: Path) -> Path:
    page = tmp_path / "runs" / "s3run" / "report.html"
    page.parent.mkdir(parents=True)
    page.write_text("<!doctype html><meta charset=utf-8><p>published ✓ " + uuid.uuid4().hex + "</p>")
    return page


def test_publish_report_presigned_url_downloads_the_page(env_credentials, tmp_path):  # noqa: F811
    """On moto's real S3 server: the page is copied to s3://bucket/NAME.report.html beside the store, and
    the presigned URL downloads exactly its bytes, as text/html, with no credentials of our own."""
    s3 = env_credentials["s3"]
    name = f"publish-{uuid.uuid4().hex[:8]}"
    page = _page(tmp_path)
    spec = _spec(f"s3://{BUCKET}/{name}.zarr", tmp_path, client_kwargs={"region_name": REGION})
    link = publish_report(spec, page, expires=600)
    assert link.url.startswith(f"{env_credentials['endpoint']}/{BUCKET}/{name}.report.html?")
    assert "Signature=" in link.url and "presigned" in link.note  # SigV2 or SigV4 query auth
    with urllib.request.urlopen(link.url, timeout=10) as r:
        assert r.status == 200 and r.read() == page.read_bytes()
        assert r.headers["Content-Type"].startswith("text/html")
    assert s3.get_object(Bucket=BUCKET, Key=f"{name}.report.html")["Body"].read() == page.read_bytes()
    unsigned = publish_report(spec, page)  # no lifetime: the object's URL, and the note says how to sign
    assert unsigned.url == f"s3://{BUCKET}/{name}.report.html" and PRESIGN_ENV in unsigned.note


def test_artifact_link_for_a_remote_store(env_credentials, tmp_path):  # noqa: F811
    """What write_html_report links for an S3 store: presigned only when REPINT_REPORTS_PRESIGN says so
    (the URL carries the access key id), else the served local copy, else the object's URL; a bucket
    that does not exist gives the local link and a note, not an error."""
    page = _page(tmp_path)
    name = f"artifact-{uuid.uuid4().hex[:8]}"
    spec = _spec(f"s3://{BUCKET}/{name}.zarr", tmp_path, client_kwargs={"region_name": REGION})
    presigned = artifact_link(spec, page, {PRESIGN_ENV: "600"})
    with urllib.request.urlopen(presigned.url, timeout=10) as r:
        assert r.read() == page.read_bytes()
    served_env = {REPORTS_URL_ENV: "http://127.0.0.1:8765", REPORTS_ROOT_ENV: str(tmp_path / "runs")}
    served = artifact_link(spec, page, served_env)
    assert served.url == "http://127.0.0.1:8765/s3run/report.html"
    assert f"s3://{BUCKET}/{name}.report.html" in served.note
    plain = artifact_link(spec, page, {})
    assert plain.url == f"s3://{BUCKET}/{name}.report.html" and "repint serve" in plain.note
    missing = artifact_link(_spec("s3://no-such-bucket-repint/x.zarr", tmp_path), page, {PRESIGN_ENV: "600"})
    assert missing.url == page.resolve().as_uri() and "failed" in missing.note
    bad = artifact_link(spec, page, {PRESIGN_ENV: "soon"})
    assert bad.url == f"s3://{BUCKET}/{name}.report.html" and PRESIGN_ENV in bad.note


def test_publish_where_the_file_system_cannot_sign(tmp_path):
    """fsspec's in-memory file system cannot presign: the object's URL is linked, and the note says so."""
    import fsspec

    page = _page(tmp_path)
    name = uuid.uuid4().hex[:8]
    link = publish_report(_spec(f"memory://reports/{name}.zarr", tmp_path), page, expires=60)
    assert link.url == f"memory://reports/{name}.report.html" and "cannot presign" in link.note
    assert fsspec.filesystem("memory").cat_file(f"/reports/{name}.report.html") == page.read_bytes()
