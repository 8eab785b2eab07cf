"""The store's layout, declared once: every stage, the stages it reads, its units and its arrays.

A :class:`StageKind` is a family of stages (``ingest`` is ``ingest-reference`` and ``ingest-unseen``);
:meth:`StageKind.of` gives one :class:`Stage`, whose ``stage["features"]`` is an array's path in the
store. Shapes and chunks are written with symbolic dimensions, resolved by a mapping of sizes:

====== ==================================================================
``N``  images of the stage's split (``reference`` for centres and polytopes, ``unseen`` for evaluation)
``K``, ``h``, ``w``   channels and spatial size of ψ; ``D = K h w``
``C``  classes; ``M`` boundaries, ``B = ceil(M / 8)`` bytes of sign bits per image
``V``  centres (interpretations); ``Q`` the longest polytope's Q (boundaries it may choose from)
``chunk``  images per chunk (``runtime.chunk_size``); ``W_rows`` rows per chunk of ``boundaries/W``
====== ==================================================================

:class:`repint.storage.FeatureStore.prepare` creates a stage's arrays from this, ``repint verify``
checks a store against it, and :func:`stage_of` says which stage vouches for a path. A new stage is
one entry in :data:`STAGES` (``docs/store-layout.md`` lists the same arrays for readers).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ASSIGNMENT", "BOUNDARIES", "CENTRES", "EVALUATE", "INGEST", "INTERPRET", "POLYTOPES", "SIGNS", "SPLITS",
           "STAGES", "ArraySpec", "Stage", "StageKind", "derived_sizes", "parse_stage", "stage_of"]

SPLITS = ("reference", "unseen")
Dim = str | int


@dataclass(frozen=True)
class ArraySpec:
    """One array of a stage: ``name`` under the stage's group, its shape, dtype and chunks (symbolic;
    ``chunks=None`` is one chunk), the fill value of unwritten elements, whether it holds the bulk
    features (fast codec), and whether :meth:`FeatureStore.prepare` creates it up front for units to
    fill (``per_unit``) or a task writes it whole."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str
    chunks: tuple[Dim, ...] | None = None
    fill_value: Any = None
    fast: bool = False
    per_unit: bool = True
    later: bool = False  # added after stores were first written: a complete stage of before may lack it

    @property
    def kind(self) -> str:
        """The numpy dtype kind (``f``, ``i``, ``u``, ``b``, ``U``) a stored array must have."""
        return {"str": "U", "bool": "b"}.get(self.dtype, self.dtype[0])


@dataclass(frozen=True)
class StageKind:
    """A family of stages named ``template`` (``{split}`` or ``{method}`` filled in by :meth:`of`),
    its arrays under ``group``, what its units are (``chunks`` of images, ``V`` centres, or ``1``),
    the kinds of stage whose fingerprints its own includes (``reads``), and which split ``N`` counts.
    ``dynamic``: the arrays are the method's own (interpretations) and only the group is declared."""

    template: str
    group: str
    arrays: tuple[ArraySpec, ...] = ()
    units: Literal["chunks", "V", "1"] = "1"
    reads: tuple[str, ...] = ()
    images: str = "{split}"
    dynamic: bool = False
    owns_group: bool = False  # nothing but the stage writes under its group (a reset deletes the group)
    local_dims: tuple[str, ...] = ()  # dimensions each stage sizes for itself (evaluation settings); unsized: 0

    def __post_init__(self) -> None:
        if self.dynamic and not self.owns_group:
            raise ValueError(f"stage {self.template!r}: a stage with dynamic arrays must own its group")

    @property
    def family(self) -> str:
        return self.template.split("-{")[0]

    def of(self, key: str | None = None) -> Stage:
        """The stage for one split or method (``INGEST.of("unseen")``)."""
        fill = {"split": key, "method": key}
        if ("{" in self.template) != (key is not None):
            raise ValueError(f"stage {self.template!r} takes {'a key' if '{' in self.template else 'no key'}")
        return Stage(self, self.template.format(**fill), self.group.format(**fill), self.images.format(**fill), key)


@dataclass(frozen=True)
class Stage:
    """One stage of one store: its name (``signs-unseen``), group, split and declaration."""

    kind: StageKind
    name: str
    group: str
    split: str
    key: str | None = None

    def __getitem__(self, array: str) -> str:
        """The path of a declared array (``SIGNS.of("unseen")["signs"]`` -> ``signs/unseen``); any
        name under the group of a stage with dynamic arrays (``INTERPRET.of("RI")["c0"]``)."""
        if self.kind.dynamic:
            return f"{self.group}/{array}"
        return self._path(self.spec(array))

    def spec(self, array: str) -> ArraySpec:
        """The declaration of one array (``BOUNDARIES.of().spec("W").chunks`` -> ``("W_rows", "D")``);
        a stage of one array (``signs``) also answers to the stage's family name."""
        for a in self.kind.arrays:
            if a.name == array or (a.name == "" and array == self.kind.family):
                return a
        raise KeyError(f"stage {self.name!r} declares no array {array!r}")

    def _path(self, spec: ArraySpec) -> str:
        return self.group if spec.name == "" else f"{self.group}/{spec.name}"

    @property
    def arrays(self) -> Iterator[tuple[str, ArraySpec]]:
        """Every declared array with its path."""
        for a in self.kind.arrays:
            yield self._path(a), a

    @property
    def reset_paths(self) -> list[str]:
        """What a reset stage deletes before anything of new inputs is written: its arrays (the whole
        group where the stage owns all of it)."""
        return [self.group] if self.kind.owns_group else [p for p, _ in self.arrays]

    @property
    def reads(self) -> list[str]:
        """The names of the stages whose fingerprints this stage's includes, in order."""
        out = []
        for family in self.kind.reads:
            kind = STAGES[family]
            key = self.split if "{split}" in kind.template else self.key if "{method}" in kind.template else None
            out.append(kind.of(key).name)
        return out

    def n_units(self, sizes: Mapping[str, int]) -> int:
        """How many units the stage has for these sizes (``chunks``: ``ceil(N / chunk)``)."""
        if self.kind.units == "chunks":
            return math.ceil(sizes["N"] / sizes["chunk"]) if sizes["N"] else 0
        return int(sizes["V"]) if self.kind.units == "V" else 1

    def resolve(self, dims: tuple[Dim, ...], sizes: Mapping[str, int]) -> tuple[int, ...]:
        """Symbolic dimensions as numbers (derived ones too, :func:`derived_sizes`)."""
        known = {**dict.fromkeys(self.kind.local_dims, 0), **derived_sizes(sizes)}  # unsized: zero-wide
        missing = [d for d in dims if isinstance(d, str) and d not in known]
        if missing:
            raise KeyError(f"stage {self.name!r}: no size given for {', '.join(missing)} (sizes: {sorted(known)})")
        return tuple(d if isinstance(d, int) else int(known[d]) for d in dims)


def derived_sizes(sizes: Mapping[str, int]) -> dict[str, int]:
    """``sizes`` with the dimensions that follow from others: ``D = K h w``, ``B = ceil(M / 8)`` and
    the rows per chunk of ``boundaries/W``, ``W_rows = min(M, 256)`` (at least 1)."""
    out = dict(sizes)
    if {"K", "h", "w"} <= out.keys():
        out.setdefault("D", out["K"] * out["h"] * out["w"])
    if "M" in out:
        out.setdefault("B", -(-out["M"] // 8))
        out.setdefault("W_rows", max(1, min(out["M"], 256)))
    return out


def _a(name: str, shape: tuple[Dim, ...], dtype: str, chunks: tuple[Dim, ...] | None = None, fill: Any = None,
       **kw: Any) -> ArraySpec:
    return ArraySpec(name, shape, dtype, chunks, fill, **kw)


INGEST = StageKind("ingest-{split}", "{split}", units="chunks", arrays=(
    _a("features", ("N", "K", "h", "w"), "f4", ("chunk", "K", "h", "w"), fast=True),
    _a("logits", ("N", "C"), "f4", ("chunk", "C")),
    _a("predictions", ("N",), "i8", ("chunk",), -1),
    _a("labels", ("N",), "i8", per_unit=False),
    _a("ids", ("N",), "str", per_unit=False)))
CENTRES = StageKind("centres", "centres", images="reference", reads=("ingest",), arrays=(
    _a("vectors", ("V", "D"), "f4", per_unit=False),
    _a("labels", ("N",), "i8", per_unit=False),
    _a("input_index", ("V",), "i8", per_unit=False),
    _a("predicted_class", ("V",), "i8", per_unit=False)))
BOUNDARIES = StageKind("boundaries", "boundaries", images="reference", reads=("centres",), arrays=(
    _a("W", ("M", "D"), "f4", ("W_rows", "D"), per_unit=False),
    _a("b", ("M",), "f8", per_unit=False),
    _a("top2", ("M", 2), "i8", per_unit=False),
    _a("source", ("M",), "i8", per_unit=False),
    _a("owner", ("M",), "i8", per_unit=False)))
SIGNS = StageKind("signs-{split}", "signs/{split}", units="chunks", reads=("boundaries", "ingest"), arrays=(
    _a("", ("N", "B"), "u1", ("chunk", "B"), 0),))
POLYTOPES = StageKind("polytopes", "polytopes", units="V", images="reference", reads=("signs",), owns_group=True,
                      arrays=(
    _a("boundaries", ("V", "Q"), "i8", (1, "Q"), -1),
    _a("orientation", ("V", "Q"), "bool", (1, "Q"), False),
    _a("covered", ("V", "N"), "bool", (1, "N"), False),
    *(_a(name, ("V",), "i8", (1,), -1) for name in ("tau", "delta", "n_covered", "n_other_covered", "size")),
    _a("purity", ("V",), "f8", (1,), float("nan"))))
INTERPRET = StageKind("interpret-{method}", "interpretations/{method}", units="V", images="reference",
                      reads=("polytopes",), dynamic=True, owns_group=True)
EVALUATE = StageKind("evaluate-{method}", "evaluation/{method}", units="chunks", images="unseen",
                     reads=("interpret", "signs"), owns_group=True, arrays=(
    _a("centre", ("N",), "i8", ("chunk",), -1),
    _a("covered", ("N",), "bool", ("chunk",), False),
    *(_a(name, ("N",), "f8", ("chunk",), float("nan")) for name in ("y", "y_masked", "kept_fraction")),
    # repint.scoring's per-image columns: F kept shares, G curves of T points, th x tw thumbnails
    *(_a(name, ("N", "F"), "f8", ("chunk", "F"), float("nan"), later=True)
      for name in ("y_kept", "road_keep", "road_remove")),
    _a("curves", ("N", "G", "T"), "f8", ("chunk", "G", "T"), float("nan"), later=True),
    _a("thumb", ("N", "th", "tw"), "f4", ("chunk", "th", "tw"), 0.0, later=True)),
    local_dims=("F", "G", "T", "th", "tw"))

#: the unseen images' interpretation, rewritten by every evaluation (no stage: no completion records)
ASSIGNMENT = StageKind("assign", "evaluation/assignment", images="unseen", arrays=(
    _a("nearest", ("N",), "i8", per_unit=False),
    _a("ri_centre", ("N",), "i8", per_unit=False),
    _a("ri_covered", ("N",), "bool", per_unit=False),
    _a("fallback_centre", ("N", "R"), "i8", per_unit=False)))  # column r: the r-th rule of repint.assignment

#: every kind of stage, in the pipeline's order
STAGES: dict[str, StageKind] = {k.family: k for k in (INGEST, CENTRES, BOUNDARIES, SIGNS, POLYTOPES, INTERPRET,
                                                     EVALUATE)}


def parse_stage(name: str) -> Stage | None:
    """The stage called ``name`` (``signs-unseen``, ``interpret-RI``), or None for no declared stage."""
    for kind in STAGES.values():
        if "{" not in kind.template:
            if name == kind.template:
                return kind.of()
        elif name.startswith(kind.family + "-") and len(name) > len(kind.family) + 1:
            key = name[len(kind.family) + 1:]
            if "{split}" in kind.template and key not in SPLITS:
                continue
            return kind.of(key)
    return None


def stage_of(path: str) -> str | None:
    """The stage whose completion vouches for the array at ``path`` (``signs/reference`` ->
    ``signs-reference``), or None for arrays no stage owns (``evaluation/assignment``, ``_done``).
    A group names its stage (``signs/<x>`` -> ``signs-<x>``); a top-level name is an ingest's only
    for a declared split, and below it (``reference`` alone is no array of ingest's)."""
    parts = path.strip("/").split("/")
    for kind in STAGES.values():
        group = kind.group.split("/")
        bare = group == ["{split}"]
        if len(parts) < len(group) + bare:
            continue
        fill: dict[str, str] = {}
        for want, have in zip(group, parts, strict=False):
            if want in ("{split}", "{method}"):
                fill[want[1:-1]] = have
            elif want != have:
                break
        else:
            key = fill.get("split", fill.get("method"))
            if bare and key not in SPLITS:
                continue
            if kind is EVALUATE and key == "assignment":  # rewritten whole by every evaluation
                return None
            return kind.of(key).name
    return None
