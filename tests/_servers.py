"""Real servers for tests, bound to 127.0.0.1 and stopped by PID (their own process group)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in a process group of its own, output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group started by :func:`start`, then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                "PREFECT_CLI_PROMPT": "false"})
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def start_prefect_server(home: Path, log: Path, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    """``prefect server start`` on 127.0.0.1 with its own database in ``home``; returns the API URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**prefect_env(home), "PREFECT_UI_API_URL": url}  # else the UI asks port 4200 for its data
    proc = start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                 log, env)
    try:
        wait_http(f"{url}/health", timeout, proc)
    except Exception:
        stop(proc)
        raise
    return proc, url


# a Dask cluster of real processes ------------------------------------------------------------------
@dataclass
class Cluster:
    address: str
    tmp: Path
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)  # by --name

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=30, set_as_default=False)

    def start_worker(self, name: str, *extra: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nthreads", "1", "--host",
             "127.0.0.1", "--dashboard-address", "127.0.0.1:0", "--no-nanny", "--name", name, *extra],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.tmp)
        log.close()
        self.procs.append(proc)
        self.workers[name] = proc
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:] for p in self.tmp.glob("*.log"))


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM one process started by a test, then SIGKILL it if it does not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def wait_workers(client, n: int, timeout: float = 120) -> set[str]:
    """Wait until exactly ``n`` workers are connected; their addresses."""
    deadline = time.monotonic() + timeout
    while True:
        workers = set(client.scheduler_info(n_workers=-1)["workers"])
        if len(workers) == n:
            return workers
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(workers)} workers connected, waited for {n}")
        time.sleep(0.2)


@contextlib.contextmanager
def dask_cluster(tmp: Path, workers: tuple[str, ...] = ("worker-0", "worker-1")) -> Iterator[Cluster]:
    """A ``dask scheduler`` and one ``dask worker`` (one thread, no nanny) per name, on 127.0.0.1, each a
    process of its own; stopped by PID. The workers' Prefect task runs report to this process's
    Prefect API (else each worker would start a temporary server of its own), their task results
    go to a private folder."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_LOCAL_STORAGE_PATH": str(tmp / "prefect-storage"), "OMP_NUM_THREADS": "1"}
    sched_file = tmp / "sched.json"
    log = open(tmp / "scheduler.log", "wb")  # noqa: SIM115
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
         "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    log.close()
    c = Cluster(address="", tmp=tmp, env=env)
    try:
        deadline = time.monotonic() + 120
        while not sched_file.exists() or not sched_file.read_text().strip():
            assert scheduler.poll() is None, c.logs()
            assert time.monotonic() < deadline, "the scheduler did not write its file\n" + c.logs()
            time.sleep(0.2)
        time.sleep(0.2)  # written in one go, but let the write finish
        c.address = json.loads(sched_file.read_text())["address"]
        for name in workers:
            c.start_worker(name)
        with c.client() as client:
            client.wait_for_workers(len(workers), timeout=180)
        yield c
    finally:
        for proc in reversed(c.procs):
            stop_process(proc)
        stop_process(scheduler)


# an HTTP proxy that injects faults -------------------------------------------------------------------
class FaultyProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of ``upstream`` (e.g. moto's S3 server) that fails
    chosen requests: ``fail(method, path_part, outcomes)`` makes the next requests whose method is
    ``method`` and whose path contains ``path_part`` answer, in turn, each of ``outcomes``: an HTTP
    status (``503``: S3's ServiceUnavailable error), ``"slowdown"`` (503 SlowDown) or ``"reset"``
    (the connection is reset with no answer). ``log`` lists every request as (method, path, outcome)."""

    def __init__(self, upstream: str) -> None:
        import http.client
        import threading
        import urllib.parse
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.upstream = urllib.parse.urlsplit(upstream)
        self.log: list[tuple[str, str, str]] = []
        self.rules: list[list] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                outcome = proxy._outcome(self.command, self.path)
                if outcome == "reset":
                    proxy._record(self.command, self.path, "reset")
                    linger = struct.pack("ii", 1, 0)  # close with RST: a reset, not an orderly end
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    self.close_connection = True
                    self.connection.close()
                    return
                if outcome is not None:
                    proxy._record(self.command, self.path, str(outcome))
                    code = b"SlowDown" if outcome == "slowdown" else b"ServiceUnavailable"
                    error = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>' + code + b"</Code><Message>"
                             b"Injected by the test's proxy</Message></Error>")
                    self.send_response(503 if outcome == "slowdown" else int(outcome))
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(error)
                    return
                hop = ("transfer-encoding", "connection")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                proxy._record(self.command, self.path, str(resp.status))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail(self, method: str, path_part: str, outcomes: list) -> None:
        with self._lock:
            self.rules.append([method, path_part, list(outcomes)])

    def _outcome(self, method: str, path: str):
        with self._lock:
            for rule in self.rules:
                if rule[0] == method and rule[1] in path and rule[2]:
                    return rule[2].pop(0)
        return None

    def _record(self, method: str, path: str, outcome: str) -> None:
        with self._lock:
            self.log.append((method, path.split("?")[0], outcome))

    def requests(self, method: str, path_part: str) -> list[str]:
        """Outcomes of the requests so far with this method whose path contains ``path_part``."""
        with self._lock:
            return [o for m, p, o in self.log if m == method and path_part in p]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
