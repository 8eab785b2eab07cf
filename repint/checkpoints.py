"""Loading weights as people save them: plain state dicts, state dicts nested in a training checkpoint,
keys prefixed by a wrapper (DataParallel/DDP, torch.compile, Lightning), and torchvision's pretrained
weights through its own API. Always ``weights_only=True``: a checkpoint never runs code.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["NESTED_KEYS", "PREFIXES", "CheckpointFormat", "load_checkpoint", "load_pretrained", "pretrained_weights"]

NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net", "weights")
"""Keys of a training checkpoint under which the state dict is looked for."""
PREFIXES = ("module.", "_orig_mod.", "model.", "net.")
"""Key prefixes of wrappers: ``nn.DataParallel``/DDP (and ``AveragedModel``'s EMA/SWA copies), ``torch.compile``,
a Lightning module's ``self.model`` or ``self.net``."""
WRAPPER_KEYS = ("n_averaged",)
"""Keys a wrapper adds beside the network's own: ``torch.optim.swa_utils.AveragedModel``'s counter."""


@dataclass(frozen=True)
class CheckpointFormat:
    """How the file's state dict was found: under which key, with which prefixes removed."""

    nested: str | None = None
    stripped: tuple[str, ...] = field(default_factory=tuple)
    dropped: tuple[str, ...] = field(default_factory=tuple)

    @property
    def plain(self) -> bool:
        return self.nested is None and not self.stripped and not self.dropped

    def describe(self) -> str:
        parts = [f"the state dict under {self.nested!r}" if self.nested else "the state dict"]
        if self.stripped:
            parts.append(f"with the key prefix{'es' if len(self.stripped) > 1 else ''} "
                         f"{' + '.join(repr(p) for p in self.stripped)} removed")
        if self.dropped:
            parts.append(f"{'and' if self.stripped else 'with'} the wrapper's {', '.join(map(repr, self.dropped))} "
                         "left out")
        return " ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"nested": self.nested, "stripped": list(self.stripped), "dropped": list(self.dropped),
                "description": self.describe()}


def _is_state(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _variants(state: dict[str, torch.Tensor], depth: int = 3) -> list[tuple[tuple[str, ...], dict[str, torch.Tensor]]]:
    """``state`` and every state reached by removing a prefix that *every* key carries (up to ``depth``)."""
    state = {k: v for k, v in state.items() if k not in WRAPPER_KEYS}
    out, frontier = [((), state)], [((), state)]
    for _ in range(depth):
        nxt = []
        for stripped, s in frontier:
            for p in PREFIXES:
                if all(k.startswith(p) for k in s):
                    nxt.append(((*stripped, p), {k[len(p):]: v for k, v in s.items()}))
        out += nxt
        frontier = nxt
    return out


def _inert_globals() -> list[Any]:
    """Types that training scripts save beside the weights and that carry no code: ``argparse.Namespace``
    (torchvision's reference scripts save their ``args``), numpy scalars, arrays of numbers and dtypes (metrics).
    An array of Python objects still needs other globals and is refused."""
    import argparse

    import numpy as np

    multiarray = getattr(np, "_core", np.core).multiarray
    return [argparse.Namespace, multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype,
            *{type(np.dtype(c)) for c in "?bhilqBHILQefdgFD"}]


def _read(path: str | Path) -> Any:
    try:
        with torch.serialization.safe_globals(_inert_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" (it refers to {found.group(1)})" if found else ""
        raise ValueError(
            f"Refused to load checkpoint {path}: it is not a plain state dict but a pickle of Python objects"
            f"{what}, and unpickling it could run arbitrary code. RepInt loads checkpoints with weights_only=True "
            "only; save the weights as a plain state dict (torch.save(model.state_dict(), path)).") from None
    except Exception as exc:
        raise ValueError(f"Cannot load checkpoint {path} ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}): "
                         "`model.checkpoint` must be a file written by torch.save(model.state_dict(), path).") from None


def _candidates(obj: Any) -> list[tuple[str | None, dict[str, torch.Tensor]]]:
    found: list[tuple[str | None, dict[str, torch.Tensor]]] = [(None, obj)] if _is_state(obj) else []
    if isinstance(obj, dict):
        found += [(k, obj[k]) for k in NESTED_KEYS if _is_state(obj.get(k))]
    return found


def _matches(keys: set[str], expected: set[str]) -> bool:
    """Every key matches; batch-norm's ``num_batches_tracked`` may be missing (files saved before PyTorch 0.4.1
    or rebuilt as plain dicts; ``load_state_dict`` fills it in)."""
    return keys <= expected and all(k.endswith("num_batches_tracked") for k in expected - keys)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def load_checkpoint(net: nn.Module, path: str | Path) -> CheckpointFormat:
    """Load ``path`` into ``net`` with ``weights_only=True`` and strict key checking; return how its state
    dict was found.

    The state dict may be the file itself or nested under one of :data:`NESTED_KEYS`, and its keys may
    carry wrapper prefixes (:data:`PREFIXES`); a nesting or a prefix is accepted only when it makes every
    key match the architecture, and two different matching state dicts are an error. Every failure is a
    ``ValueError`` that names the file and says what to do."""
    obj = _read(path)
    candidates = _candidates(obj)
    if not candidates:
        values = obj.values() if isinstance(obj, dict) else []
        kinds = sorted({type(v).__name__ for v in values})
        raise ValueError(f"Checkpoint {path} holds a {type(obj).__name__}"
                         + (f" with values of type {', '.join(kinds)}" if kinds else "")
                         + ", not a state dict of tensors: save it with torch.save(model.state_dict(), path)"
                         + (f" (looked for one under {', '.join(map(repr, NESTED_KEYS))} too)."
                            if isinstance(obj, dict) else "."))
    expected = set(net.state_dict())
    tried = [(CheckpointFormat(nested, stripped, tuple(k for k in WRAPPER_KEYS if k in state)), s)
             for nested, state in candidates for stripped, s in _variants(state)]
    matches = [(fmt, s) for fmt, s in tried if _matches(set(s), expected)]
    if not matches:
        fmt, best = min(tried, key=lambda t: len(set(t[1]) ^ expected))
        missing = sorted(k for k in expected - set(best) if not k.endswith("num_batches_tracked"))
        unexpected = sorted(set(best) - expected)
        others = "; ".join(f.describe() for f, _ in tried if f != fmt)
        raise ValueError(f"Checkpoint {path} does not match the architecture: missing keys {missing[:8]}"
                         f"{' (and more)' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                         f"{' (and more)' if len(unexpected) > 8 else ''}. Check `model.architecture` "
                         "(and that the checkpoint is the network's own state_dict, not a wrapper's). "
                         f"Tried {fmt.describe()}" + (f"; also {others}" if others else "") + ".")
    fmt, state = matches[0]
    different = [f for f, s in matches[1:] if not _same(s, state)]
    if different:
        raise ValueError(f"Checkpoint {path} is ambiguous: {fmt.describe()} and "
                         f"{', '.join(f.describe() for f in different)} all match the architecture but hold "
                         "different weights. Save the one you mean alone: torch.save(model.state_dict(), path).")
    _load_state(net, state, path)
    return fmt


def _load_state(net: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        sizes = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        other = " ".join(str(exc).split())[:400]
        raise ValueError(f"Checkpoint {path} does not fit the architecture: {'; '.join(sizes[:4]) or other}. "
                         "Check `model.architecture`, `model.num_classes` (the output count) and "
                         "`data.image_size`.") from None


# ------------------------------------------------------------------------------------- torchvision's weights
def pretrained_weights(architecture: str, name: str) -> Any:
    """torchvision's weights enum member for ``architecture``: ``DEFAULT``, a member name
    (``IMAGENET1K_V1``) or a full name (``ResNet18_Weights.IMAGENET1K_V1``)."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(architecture)
    except (ValueError, KeyError):
        raise ValueError(f"model.weights is set, but {architecture!r} is not a torchvision architecture with "
                         "pretrained weights: use a `model.checkpoint` instead.") from None
    member = name.split(".", 1)[1] if name.startswith(enum.__name__ + ".") else name
    try:
        return enum[member] if member != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise ValueError(f"model.weights {name!r} is not a weight of {architecture}: use DEFAULT or one of "
                         f"{', '.join(w.name for w in enum)}.") from None


def cached_weights_file(weights: Any) -> Path:
    """Where torch hub keeps ``weights``' file (``$TORCH_HOME/hub/checkpoints/<file name of its URL>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def load_pretrained(net: nn.Module, weights: Any) -> Path:
    """Load torchvision's ``weights`` into ``net`` through torchvision's own API (torch hub's cache, a
    download where there is network), ``weights_only=True``. Without network and without the cached
    file, a ``ValueError`` says how to pre-download it. Returns the cached file."""
    path = cached_weights_file(weights)
    import contextlib
    import io

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # torch hub's "Downloading: ..." (the error says it all)
            state = weights.get_state_dict(progress=False, weights_only=True, map_location="cpu")
    except Exception as exc:
        if path.is_file():  # there, but not a plain state dict, or damaged: the checkpoint's refusals
            _read(path)  # a pickle carrying code: the checkpoint's refusal, before anything else
            raise ValueError(f"model.weights {weights}: the cached file {path} does not load "
                             f"({type(exc).__name__}): delete it so that it is downloaded again.") from None
        raise ValueError(
            f"model.weights {weights}: {path.name} is not in the torch hub cache ({path.parent}) and downloading "
            f"{weights.url} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). "
            f"On a machine with network run `python -c \"import torchvision; torchvision.models.get_weight("
            f"'{weights}').get_state_dict()\"` and copy {path.name} into {path.parent} (or set TORCH_HOME).") from None
    _load_state(net, _torchvision_renames(weights, state), path)
    return path


_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _torchvision_renames(weights: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The key renames torchvision's builders apply to their published files: DenseNet's were saved with
    ``norm.1``-style names that its modules call ``norm1`` (``torchvision.models.densenet._load_state_dict``)."""
    if not type(weights).__name__.startswith("DenseNet"):
        return state
    return {(m.group(1) + m.group(2) if (m := _DENSENET_OLD_KEY.match(k)) else k): v for k, v in state.items()}
