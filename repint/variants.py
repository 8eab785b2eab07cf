"""A method run under other ``interpretation`` settings (method.md's variants), as a value.

``Variant("RI", (("orient", False),))`` is RI with unoriented boundaries. Its :attr:`~Variant.label`
(``RI[orient=false]``) is what tables and summaries show; its :attr:`~Variant.key`
(``RI.orient-false``) is what names its stages and its groups in the store, made only of letters,
digits and ``.+_-``. A label is parsed once, where a user wrote it (config, command line).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["EVALUATION_KEYS", "OWN_STORE_KEYS", "VARIANT_KEYS", "Variant"]

#: the ``interpretation`` settings a variant may change
VARIANT_KEYS = ("q", "q_sampling", "solver", "orient")
#: those of them that change what the store's stages hold, and what: a variant setting one needs a
#: store of its own (``flows.studies.variant_plan``); the others (``orient``) run on the run's store
OWN_STORE_KEYS = {"q": "Q", "q_sampling": "Q", "solver": "the polytopes"}
#: the ``evaluation`` settings a variant may change (RI's fallback for the images no polytope covers)
EVALUATION_KEYS = ("fallback",)
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


def _value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(low)
    except ValueError:
        return text.strip()


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Variant:
    """A registered method (``base``) and the ``interpretation`` settings it overrides, in order."""

    base: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, base: str, overrides: Mapping[str, Any] | None = None) -> Variant:
        return cls(base, tuple((overrides or {}).items()))

    @classmethod
    def parse(cls, label: str | Variant) -> Variant:
        """``"RI[orient=false,q=100]"`` -> ``Variant("RI", (("orient", False), ("q", 100)))``; a plain
        name has no overrides."""
        if isinstance(label, Variant):
            return label
        if not label.endswith("]") or "[" not in label:
            return cls(label)
        base, _, inner = label[:-1].partition("[")
        overrides = []
        for part in filter(None, inner.split(",")):
            key, eq, value = part.partition("=")
            if not eq:
                raise ValueError(f"Method variant {label!r}: expected key=value inside [...], got {part!r}.")
            overrides.append((key.strip(), _value(value)))
        return cls(base, tuple(overrides))

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.overrides)

    @property
    def label(self) -> str:
        """What tables show: ``RI[orient=false]`` (the base name alone without overrides)."""
        if not self.overrides:
            return self.base
        return f"{self.base}[{','.join(f'{k}={_show(v)}' for k, v in self.overrides)}]"

    @property
    def key(self) -> str:
        """What the store's paths and stage names use: ``RI.orient-false``."""
        parts = [self.base, *(f"{k}-{_show(v)}" for k, v in self.overrides)]
        return _SAFE.sub("_", ".".join(parts))

    def interpretation(self, base: Any) -> Any:
        """The ``interpretation`` settings (an ``InterpretationConfig``) this variant runs with:
        ``base`` with the overrides, validated again."""
        own = {k: v for k, v in self.overrides if k not in EVALUATION_KEYS}
        return type(base).model_validate({**base.model_dump(), **own}) if own else base

    @property
    def interpreted(self) -> Variant:
        """The variant whose interpretations this one reuses: without the overrides of
        :data:`EVALUATION_KEYS` (``RI[fallback=least-violated]`` reuses ``RI``'s)."""
        return Variant(self.base, tuple((k, v) for k, v in self.overrides if k not in EVALUATION_KEYS))

    def evaluation(self, base: Any) -> Any:
        """The ``evaluation`` settings (an ``EvaluationConfig``) this variant is evaluated with: ``base``
        with the overrides of :data:`EVALUATION_KEYS`."""
        own = {k: v for k, v in self.overrides if k in EVALUATION_KEYS}
        return base.model_copy(update=own) if own else base

    def method(self) -> Any:
        """A fresh instance of the registered base method."""
        from repint.methods import get_method

        return get_method(self.base)

    def __str__(self) -> str:
        return self.label
