"""The write lock of a store: one run writes a store at a time.

The lock is an object ``_lock/zarr.json`` inside the store naming its holder (host, PID, start time,
command) with a heartbeat the holder refreshes. How the object is created atomically, read,
rewritten and removed depends on where the store lives: one small :class:`LockObject` class per
backend (:class:`LocalLockFile`, :class:`S3LockObject`, :class:`FsspecLockObject`), chosen by
:func:`lock_object`; a new backend's locking is one more class. :class:`StoreLock` holds the policy:
who holds the lock, when it is stale, taking it over, the heartbeat.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from repint.storage.errors import StoreLockedError, retrying
from repint.storage.secrets import redact_url, reveal_secrets, split_url_credentials

__all__ = ["LOCK_PATH", "FsspecLockObject", "LocalLockFile", "LockObject", "S3LockObject", "StoreLock",
           "lock_object", "release_held"]

LOCK_PATH = "_lock/zarr.json"  # a Zarr group of its own: readers and zarr's listings see a valid node
log = logging.getLogger("repint.storage")
_HELD: weakref.WeakSet[StoreLock] = weakref.WeakSet()  # the locks this process holds now


def release_held() -> None:
    """Release every lock this process holds (a run stopped by a signal: the next run need not take
    over a stale lock)."""
    for lock in list(_HELD):
        with contextlib.suppress(Exception):
            lock._stop.set()  # no join: the heartbeat thread may wait on a slow store, and the process ends
            lock._remove(lock.token)


# where the lock object lives --------------------------------------------------------------------
class LockObject:
    """The lock object of one store on one backend. ``where`` names it in messages."""

    path: str
    where: str

    def create(self, data: bytes, ours: Callable[[], bool]) -> bool:
        """Write the object if none exists; False when one does. ``ours()`` reads it back and says
        whether it is this lock's, for backends that cannot tell otherwise."""
        raise NotImplementedError

    def read(self) -> bytes:
        """The object's bytes; ``FileNotFoundError`` when there is none."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        """Replace the object (a reader sees the old record or the new one)."""
        raise NotImplementedError

    def remove(self) -> None:
        """Delete the object; ``FileNotFoundError`` when it is gone already."""
        raise NotImplementedError

    def age(self) -> float:
        """Seconds since the object was last written."""
        raise NotImplementedError


class LocalLockFile(LockObject):
    """A local store: a complete file linked into place (``os.link`` fails when the lock exists;
    ``O_EXCL`` where links are not supported), replaced atomically by ``os.replace``."""

    def __init__(self, root: str, token: str) -> None:
        self.path = self.where = os.path.join(root, *LOCK_PATH.split("/"))
        self._tmp = f"{self.path}.{token}.tmp"

    def create(self, data: bytes, ours: Callable[[], bool]) -> bool:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self._tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(self._tmp, self.path)  # atomic, and only if nothing is there: the file is complete when seen
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        finally:
            os.unlink(self._tmp)

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def write(self, data: bytes) -> None:
        with open(self._tmp, "wb") as f:
            f.write(data)
        os.replace(self._tmp, self.path)  # atomic: a reader sees the old record or the new one

    def remove(self) -> None:
        os.unlink(self.path)
        with contextlib.suppress(OSError):  # the folder _lock, unless something else is in it
            os.rmdir(os.path.dirname(self.path))

    def age(self) -> float:
        return time.time() - os.stat(self.path).st_mtime


class FsspecLockObject(LockObject):
    """Any other fsspec file system, without a conditional write: write the object, let a
    concurrent writer's write land, read it back. Every request is retried on transient errors."""

    def __init__(self, fs: Any, path: str, where: str) -> None:
        self.fs, self.path, self.where = fs, path, where

    def create(self, data: bytes, ours: Callable[[], bool]) -> bool:
        if self.fs.exists(self.path):
            return False
        self.fs.pipe_file(self.path, data)
        time.sleep(0.5)
        return ours()

    def read(self) -> bytes:
        return retrying(f"reading the lock {self.where}", lambda: self.fs.cat_file(self.path))

    def write(self, data: bytes) -> None:
        retrying(f"refreshing the lock {self.where}", lambda: self.fs.pipe_file(self.path, data))

    def remove(self) -> None:
        retrying(f"removing the lock {self.where}", lambda: self.fs.rm_file(self.path))

    def age(self) -> float:
        return time.time() - self.fs.modified(self.path).timestamp()


class S3LockObject(FsspecLockObject):
    """S3 (and S3-compatible servers): created by a conditional PUT (``If-None-Match: *``)."""

    def create(self, data: bytes, ours: Callable[[], bool]) -> bool:
        try:
            retrying(f"creating the lock {self.where}", lambda: self.fs.pipe_file(self.path, data, mode="create"))
            return True
        except FileExistsError:  # ours, if a retried PUT had gone through the first time
            return ours()


def lock_object(url: str, options: Mapping[str, Any], token: str) -> LockObject:
    """The lock object of the store at ``url`` (user info already split off into ``options``)."""
    if "://" not in url or url.startswith("file://"):
        return LocalLockFile(url[len("file://"):] if url.startswith("file://") else url, token)
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **reveal_secrets(options))
    path, where = root.rstrip("/") + "/" + LOCK_PATH, f"{redact_url(url).rstrip('/')}/{LOCK_PATH}"
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return (S3LockObject if "s3" in protocols else FsspecLockObject)(fs, path, where)


# whether a holder still runs --------------------------------------------------------------------
def _now_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _machine_id() -> str:
    """This kernel boot and PID namespace: a PID means the same process only where both are equal
    (containers on one host can share a host name but not their PIDs)."""
    parts = []
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
    except OSError:
        parts.append("?")
    try:
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        parts.append("?")
    return ":".join(parts)


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc; None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` (started at ``start`` ticks, when known) still runs on this machine.
    A zombie, or another process that got the PID since, counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, under another user
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, started = stat
    return state not in ("Z", "X") and not (start and started != start)


# the lock ---------------------------------------------------------------------------------------
class StoreLock:
    """The write lock of one store: a lock object ``_lock/zarr.json`` inside the store that names its
    holder (host, PID, start time, command) and carries a heartbeat the holder refreshes.

    Created atomically (see :func:`lock_object`): a local store links a complete file into place,
    S3 writes it with a conditional PUT, other fsspec file systems write it and read it back. A lock
    is *stale* when its holder is on this machine and its process is gone (or a zombie, or its PID
    was reused), or when its heartbeat is older than ``stale_after`` seconds (any host; assumes
    clocks agree to well under that). A stale lock is taken over with a warning (:attr:`took_over`);
    a live one is a :class:`StoreLockedError` naming the store, the holder and what to do.

    Only the process that runs the flows takes it; Dask workers write chunks without it."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, *,
                 stale_after: float | None = None, heartbeat: float | None = None) -> None:
        url, options = split_url_credentials(str(url), storage_options)
        self.shown = redact_url(url)
        self.stale_after = float(stale_after if stale_after is not None
                                 else os.environ.get("REPINT_LOCK_STALE_AFTER", 120))
        self.heartbeat_every = float(heartbeat if heartbeat is not None
                                     else min(15.0, self.stale_after / 4))
        self.token = uuid.uuid4().hex
        self.took_over: dict[str, Any] | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record: dict[str, Any] = {}
        self.object = lock_object(url, options, self.token)
        self.path, self.where = self.object.path, self.object.where

    # the lock object ------------------------------------------------------------------------------
    def _encode(self, record: dict[str, Any]) -> bytes:
        return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"repint_lock": record}},
                          indent=1).encode()

    def _ours(self) -> bool:
        return (self._read() or {}).get("token") == self.token

    def _read(self) -> dict[str, Any] | None:
        """The holder's record; None when there is no lock, ``{}`` when it cannot be read."""
        try:
            raw = self.object.read()
        except FileNotFoundError:
            return None
        try:
            return dict(json.loads(raw)["attributes"]["repint_lock"])
        except (ValueError, KeyError, TypeError):
            return {}

    def _age_of_object(self) -> float:
        try:
            return self.object.age()
        except Exception:
            return 0.0

    def _remove(self, token: str | None) -> None:
        """Delete the lock if it still is ``token``'s (read just before: a narrow window, see docs)."""
        current = self._read()
        if current is None or (token is not None and current.get("token") != token):
            return
        with contextlib.suppress(FileNotFoundError):
            self.object.remove()

    # holders ----------------------------------------------------------------------------------------
    def holder(self) -> dict[str, Any] | None:
        """The current holder's record (host, pid, started, heartbeat_ts, command), or None."""
        return self._read()

    def stale_reason(self, holder: dict[str, Any]) -> str | None:
        """Why ``holder``'s lock is stale, or None while it is live."""
        now = time.time()
        if not holder:
            age = self._age_of_object()
            return f"the lock cannot be read and is {age:.0f} s old" if age > self.stale_after else None
        if holder.get("host") == socket.gethostname() and holder.get("machine") == _machine_id() \
                and not _pid_alive(int(holder.get("pid", -1)), holder.get("pid_start")):
            return f"its process {holder.get('pid')} on this host ({holder.get('host')}) is gone"
        beat = float(holder.get("heartbeat_ts", 0))
        if now - beat > self.stale_after:
            return f"its last heartbeat is {now - beat:.0f} s old (stale after {self.stale_after:.0f} s)"
        return None

    @staticmethod
    def describe(holder: dict[str, Any]) -> str:
        """The holder in words, for messages."""
        if not holder:
            return "an unreadable lock"
        beat = time.time() - float(holder.get("heartbeat_ts", 0))
        return (f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')} "
                f"(last heartbeat {beat:.0f} s ago; command: {holder.get('command', '?')})")

    # acquire / release -----------------------------------------------------------------------------
    def check(self) -> None:
        """:class:`StoreLockedError` if a live run holds the lock now; takes nothing (a pre-flight)."""
        holder = self._read()
        if holder is not None and self.stale_reason(holder) is None:
            raise self._locked(holder)

    def _locked(self, holder: dict[str, Any]) -> StoreLockedError:
        return StoreLockedError(
            f"The store {self.shown} is being written by another run: {self.describe(holder)}. Two runs must "
            "not write one store at once. Wait for that run to finish, or write to another store (`--out`, "
            f"`store:`). If that run is dead, its lock is taken over automatically once its heartbeat is "
            f"older than {self.stale_after:.0f} s (at once on its own host when its process is gone); to "
            f"take it over now, delete {self.where}.")

    def acquire(self) -> StoreLock:
        """Take the lock (taking over a stale one); :class:`StoreLockedError` while a live run holds it."""
        now = time.time()
        self._record = {"token": self.token, "host": socket.gethostname(), "machine": _machine_id(),
                        "pid": os.getpid(), "pid_start": (_proc_stat(os.getpid()) or (None, None))[1],
                        "started": _now_iso(now), "started_ts": now, "heartbeat_ts": now,
                        "command": " ".join(os.path.basename(a) if i == 0 else a
                                            for i, a in enumerate(sys.argv))[:300]}
        for _ in range(5):
            if self.object.create(self._encode(self._record), self._ours):
                self._start_heartbeat()
                _HELD.add(self)
                return self
            holder = self._read()
            if holder is None:  # released in between: try again
                continue
            reason = self.stale_reason(holder)
            if reason is None:
                raise self._locked(holder)
            self.took_over = {**holder, "reason": reason}
            log.warning(self.takeover_message)
            self._remove(holder.get("token") if holder else None)
        raise StoreLockedError(f"Could not take the lock {self.where} of the store {self.shown}: other runs keep "
                               "taking it. Make sure only one run writes this store.")

    @property
    def takeover_message(self) -> str:
        h = self.took_over or {}
        return (f"Took over the stale lock of the store {self.shown} from {self.describe(h)}: {h.get('reason')}. "
                "That run died; its completed chunks are kept and only the missing ones are redone.")

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"repint-lock-{self.token[:6]}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            try:
                current = self._read()
                if (current or {}).get("token") != self.token:
                    self.lost = (f"the lock of the store {self.shown} was taken over by "
                                 f"{self.describe(current) if current else 'nobody (deleted)'}")
                    log.error(f"{self.lost}: another run may be writing this store now")
                    return
                self._record["heartbeat_ts"] = time.time()
                self.object.write(self._encode(self._record))
            except Exception as exc:  # a missed beat is not fatal; staleness takes several
                log.warning(f"could not refresh the lock {self.where}: {type(exc).__name__}: {exc}")

    def release(self) -> None:
        """Stop the heartbeat and delete the lock (if it still is ours)."""
        _HELD.discard(self)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._remove(self.token)

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
