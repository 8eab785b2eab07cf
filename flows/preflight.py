"""Checks made before the first stage, before any flow, store or server starts: that the configured device
is there and that the output folder, the store and a checkpoint to be written can be written. Each problem
is a one-line ``ValueError`` naming the config key or command-line option and saying what to do
(docs/bad-inputs.md)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from repint.config import Config

__all__ = ["check_checkpoint", "check_device", "check_output", "make_folder", "preflight"]

_CHOOSE = "set runtime.device: cpu or auto"


def check_device(device: str, key: str = "runtime.device") -> None:
    """``device`` (a validated ``runtime.device``) is one torch can use here: ``cuda``/``cuda:N`` needs a
    CUDA GPU torch sees (and N below their count), ``mps`` an Apple GPU; ``auto`` and ``cpu`` always pass."""
    if device in ("auto", "cpu"):
        return
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            env = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
            raise ValueError(f"{key}: {device}: no CUDA GPU is visible to torch (torch {torch.__version__} {built}"
                             f"{env}): {_CHOOSE}")
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            names = ", ".join(f"cuda:{i}" for i in range(count))
            raise ValueError(f"{key}: {device}: torch sees {count} CUDA GPU{'s' if count > 1 else ''} ({names}): "
                             f"set runtime.device to one of them, cuda, cpu or auto")
        return
    if device == "mps" and not torch.backends.mps.is_available():
        built = "built with MPS" if torch.backends.mps.is_built() else "built without MPS"
        raise ValueError(f"{key}: mps: no Apple MPS device is available to torch (torch {torch.__version__} "
                         f"{built}; MPS needs macOS 12.3+ on Apple silicon): {_CHOOSE}")


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _local(url: str) -> Path:
    return Path(url.removeprefix("file://")).expanduser()


def _exists(path: Path, name: str) -> bool:
    try:
        return path.exists()
    except OSError as exc:  # a folder on the way that cannot be searched
        raise ValueError(f"{name} {path}: cannot look at it ({exc.strerror}): choose another {name}, or give "
                         "the user running RepInt access to its folders") from None


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _check_writable(folder: Path, path: Path, name: str) -> None:
    """``folder`` (which exists) lets this user create ``path`` in it or under it."""
    why, fix = "", f"choose another {name}"
    if _read_only(folder):
        why = "it is on a read-only file system"
    elif not os.access(folder, os.W_OK | os.X_OK):
        why = f"the user running RepInt (uid {os.getuid()}) has no write permission there"
        fix = f"chmod u+w {folder} (or give that user write access), or {fix}"
    else:  # access() trusts the mode bits: try it (ACLs, root in /proc, NFS), leaving nothing behind
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".repint-write-check-", dir=folder))
        except OSError as exc:
            why = "it is on a read-only file system" if exc.errno == errno.EROFS else \
                f"a folder cannot be created there ({exc.strerror})"
    if why:
        raise ValueError(f"{name} {path}: cannot write in {'it' if folder == path else folder}: {why}: {fix}")


def _check_target(path: Path, name: str, folder: bool, what: str) -> None:
    """``path`` is a folder (``folder``) or a file that this user can create or write: an existing one of
    the other kind, a file on the way, or a folder without write permission is an error naming ``name``."""
    if _exists(path, name):
        if folder and not path.is_dir():
            raise ValueError(f"{name} {path} is a file, not a folder: give a folder path ({what})")
        if not folder and path.is_dir():
            raise ValueError(f"{name} {path} is a folder, not a file: give a file path ({what})")
        _check_writable(path if folder else path.parent, path, name)
        return
    above = path.absolute().parent
    while not _exists(above, name):
        above = above.parent
    if not above.is_dir():
        raise ValueError(f"{name} {path}: {above} is a file, so no folder can be made in it: choose another {name}")
    _check_writable(above, path, name)


def check_output(out_dir: str | Path, store: str | None = None) -> None:
    """``--out`` is (or can be made) a writable folder, and the store (``store`` in the config, a local
    path; default ``OUT/store.zarr``) a writable folder too."""
    out = Path(out_dir).expanduser()
    _check_target(out, "--out", True, "it will hold store.zarr, summary.json, report.html and the PNGs")
    if store is None:
        default = out / "store.zarr"
        if default.exists() and not default.is_dir():
            raise ValueError(f"--out {out}: {default} is a file, not a Zarr store (a folder): remove it, or choose "
                             "another --out")
    elif _is_local(store):
        _check_target(_local(store), "store", True, "a Zarr store is a folder; or remove the key for OUT/store.zarr")


def check_checkpoint(path: str, name: str) -> None:
    """A checkpoint ``repint train`` will write (and its ``.json`` beside it) can be written at ``path``."""
    if _is_local(path):
        _check_target(_local(path), name, False, "the checkpoint is written there with torch.save")


def preflight(cfg: Config, out_dir: str | Path) -> None:
    """Everything checked before a run's first stage beyond the config's own validation: the device (on this
    machine; with ``runtime.dask_address`` the workers run elsewhere and use their own) and the output."""
    if not cfg.runtime.dask_address:
        check_device(cfg.runtime.device)
    check_output(out_dir, cfg.store)


def make_folder(path: str | Path, name: str = "--out") -> None:
    """``mkdir -p``, with an error that names the option and the path (``Read-only file system``, ...)."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{name} {path}: cannot create the folder {exc.filename or path}: "
                         f"{exc.strerror or exc}; choose another {name}") from None
