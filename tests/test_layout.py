"""The store's layout, declared once in ``storage/layout.py``: the docs list the same arrays, every
declared path belongs to its stage, stage names round-trip, units and shapes follow from the sizes,
and :meth:`FeatureStore.prepare` creates each stage's arrays as the tasks did by hand before."""

from __future__ import annotations

import itertools
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repint.storage import FAST_COMPRESSORS, FeatureStore
from repint.storage.layout import (
    BOUNDARIES,
    CENTRES,
    EVALUATE,
    INGEST,
    INTERPRET,
    POLYTOPES,
    SIGNS,
    SPLITS,
    STAGES,
    Stage,
    derived_sizes,
    parse_stage,
    stage_of,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "store-layout.md"
DTYPES = {"float32": "f4", "float64": "f8", "int64": "i8", "uint8": "u1", "bool": "bool", "str": "str"}
METHODS = ("RI", "Grad-CAM")


def every_stage() -> list[Stage]:
    """Each declared kind of stage, for each split or for a few methods."""
    out = []
    for kind in STAGES.values():
        keys = SPLITS if "{split}" in kind.template else METHODS if "{method}" in kind.template else (None,)
        out += [kind.of(key) for key in keys]
    return out


def documented() -> dict[str, str]:
    """``docs/store-layout.md``'s table: every path (braces expanded) -> its dtype column."""
    out = {}
    for line in DOCS.read_text().splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|[^|]*\|([^|]*)\|", line)
        if not m:
            continue
        pattern, dtype = m[1], m[2].strip()
        parts = [p.split(",") for p in re.split(r"\{([^}]*)\}", pattern)[1::2]]
        fixed = re.split(r"\{[^}]*\}", pattern)
        for choice in itertools.product(*parts):
            out["".join(f + c for f, c in itertools.zip_longest(fixed, choice, fillvalue=""))] = dtype
    return out


# the layout and the docs ----------------------------------------------------------------------------
def test_docs_say_where_the_layout_is_declared():
    assert "storage/layout.py" in DOCS.read_text()


@pytest.mark.parametrize("stage", every_stage(), ids=lambda s: s.name)
def test_docs_table_lists_every_declared_array(stage):
    docs = documented()
    key = stage.key or ""
    listed = {p.replace("<method>", key): dtype for p, dtype in docs.items()}
    if stage.kind.dynamic:
        assert any(p.startswith(stage.group + "/") for p in listed), stage.group
        return
    for path, spec in stage.arrays:
        assert path in listed, f"docs/store-layout.md does not list {path} ({stage.name})"
        if listed[path]:
            assert DTYPES[listed[path]] == spec.dtype, path


@pytest.mark.parametrize("stage", every_stage(), ids=lambda s: s.name)
def test_declared_paths_belong_to_their_stage_and_names_round_trip(stage):
    for path, _ in stage.arrays:
        assert stage_of(path) == stage.name
        assert stage_of(f"/{path}/") == stage.name
    if stage.kind.dynamic:
        assert stage_of(stage["c0"] + "/channel_weights") == stage.name
    assert stage_of(stage.group) == (None if stage.kind is INGEST else stage.name)
    assert parse_stage(stage.name) == stage
    assert stage.kind.family == stage.name.split("-")[0]
    for name in stage.reads:
        assert parse_stage(name) is not None


def test_paths_and_names_no_stage_owns():
    for path in ("", "_done/ingest-reference", "_lock/zarr.json", "reference", "signs", "interpretations",
                 "evaluation", "evaluation/assignment/nearest", "features/reference", "x"):
        assert stage_of(path) is None, path
    for name in ("", "ingest", "ingest-", "ingest-train", "signs-foo", "interpret-", "nothing", "centres-x"):
        assert parse_stage(name) is None, name


def test_arrays_by_name():
    assert SIGNS.of("unseen")["signs"] == SIGNS.of("unseen")[""] == "signs/unseen"
    assert BOUNDARIES.of().spec("W").chunks == ("W_rows", "D")
    assert INTERPRET.of("RI")["c3"] == "interpretations/RI/c3"
    assert EVALUATE.of("RI").reads == ["interpret-RI", "signs-unseen"]
    assert SIGNS.of("unseen").reads == ["boundaries", "ingest-unseen"]
    with pytest.raises(KeyError, match="declares no array 'nope'"):
        CENTRES.of()["nope"]
    with pytest.raises(ValueError, match="takes a key"):
        SIGNS.of()


# units and shapes -----------------------------------------------------------------------------------
def test_units_and_shapes_from_sizes():
    ingest = INGEST.of("reference")
    assert ingest.n_units({"N": 10, "chunk": 4}) == 3
    assert ingest.n_units({"N": 8, "chunk": 4}) == 2
    assert ingest.n_units({"N": 0, "chunk": 4}) == 0
    assert POLYTOPES.of().n_units({"V": 7}) == INTERPRET.of("RI").n_units({"V": 7}) == 7
    assert CENTRES.of().n_units({}) == BOUNDARIES.of().n_units({}) == 1
    sizes = {"K": 2, "h": 3, "w": 3, "V": 5, "M": 13, "N": 10, "chunk": 4}
    assert derived_sizes(sizes)["D"] == 18 and derived_sizes(sizes)["B"] == 2
    assert CENTRES.of().resolve(CENTRES.of().spec("vectors").shape, sizes) == (5, 18)
    signs = SIGNS.of("reference")
    assert signs.resolve(signs.spec("signs").shape, sizes) == (10, 2)
    assert signs.resolve(signs.spec("signs").chunks, sizes) == (4, 2)
    w = BOUNDARIES.of().spec("W").chunks
    assert BOUNDARIES.of().resolve(w, {"M": 300, "D": 18}) == (256, 18)
    assert BOUNDARIES.of().resolve(w, {"M": 13, "D": 18}) == (13, 18)
    assert BOUNDARIES.of().resolve(w, {"M": 0, "D": 18}) == (1, 18)
    feats = ingest.spec("features").chunks
    assert ingest.resolve(feats, {**sizes, "N": 3}) == (4, 2, 3, 3)  # runtime.chunk_size images, as ever
    with pytest.raises(KeyError, match="no size given for B"):
        signs.resolve(signs.spec("signs").shape, {"N": 10})


# stage_of on any path -------------------------------------------------------------------------------
def _rule(path: str) -> str | None:
    """What the store's readers have always taken a path's stage to be."""
    parts = path.strip("/").split("/")
    head, rest = parts[0], parts[1:]
    if head in SPLITS and rest:
        return f"ingest-{head}"
    if head in ("centres", "boundaries", "polytopes"):
        return head
    family = {"signs": "signs", "interpretations": "interpret", "evaluation": "evaluate"}.get(head)
    if family and rest and not (family == "evaluate" and rest[0] == "assignment"):
        return f"{family}-{rest[0]}"
    return None


NAME = st.text(st.characters(blacklist_characters="/", codec="utf-8"), min_size=0, max_size=10)
WORD = st.one_of(st.sampled_from(["reference", "unseen", "centres", "boundaries", "signs", "polytopes",
                                  "interpretations", "evaluation", "assignment", "_done", ""]), NAME)


@settings(max_examples=400, deadline=None)
@given(st.lists(WORD, min_size=1, max_size=5), st.sampled_from(["", "/"]))
def test_stage_of_any_path(parts, slash):
    path = slash + "/".join(parts) + slash
    assert stage_of(path) == _rule(path)


#: the top-level groups of the stages that are no split's (``polytopes/x`` is the polytopes stage's)
STAGE_GROUPS = {k.group.split("/")[0] for k in STAGES.values()} - {"{split}"}


@settings(max_examples=200, deadline=None)
@given(NAME.filter(lambda s: s != "" and s not in STAGE_GROUPS), NAME)
def test_stage_of_random_split_and_method_names(name, array):
    split_owner = f"ingest-{name}" if name in SPLITS else None
    assert stage_of(f"{name}/{array or 'features'}") == split_owner
    assert stage_of(f"signs/{name}") == f"signs-{name}"
    assert stage_of(f"interpretations/{name}/c0/{array}") == f"interpret-{name}"
    assert stage_of(f"evaluation/{name}/{array}") == (None if name == "assignment" else f"evaluate-{name}")
    for kind in (INTERPRET, EVALUATE):
        assert parse_stage(kind.of(name).name) == kind.of(name)
    assert (parse_stage(f"signs-{name}") is not None) == (name in SPLITS)


# FeatureStore.prepare ---------------------------------------------------------------------------------
N, CHUNK, N_UNSEEN = 10, 4, 6
SIZES = {"N": N, "K": 2, "h": 3, "w": 3, "C": 3, "chunk": CHUNK, "M": 13, "V": 5, "Q": 7,
         "F": 3, "G": 0, "T": 0, "th": 4, "tw": 4}  # the evaluation's: 3 kept shares, no curves (zero-wide)
# what the prepare tasks created by hand: path -> shape, dtype, chunks, fill value
BY_HAND = {
    "reference/features": ((N, 2, 3, 3), "float32", (CHUNK, 2, 3, 3), 0.0),
    "reference/logits": ((N, 3), "float32", (CHUNK, 3), 0.0),
    "reference/predictions": ((N,), "int64", (CHUNK,), -1),
    "signs/reference": ((N, 2), "uint8", (CHUNK, 2), 0),
    "polytopes/boundaries": ((5, 7), "int64", (1, 7), -1),
    "polytopes/orientation": ((5, 7), "bool", (1, 7), False),
    "polytopes/covered": ((5, N), "bool", (1, N), False),
    **{f"polytopes/{a}": ((5,), "int64", (1,), -1) for a in ("tau", "delta", "n_covered", "n_other_covered", "size")},
    "polytopes/purity": ((5,), "float64", (1,), np.nan),
    "evaluation/RI/centre": ((N_UNSEEN,), "int64", (CHUNK,), -1),
    "evaluation/RI/covered": ((N_UNSEEN,), "bool", (CHUNK,), False),
    **{f"evaluation/RI/{a}": ((N_UNSEEN,), "float64", (CHUNK,), np.nan) for a in ("y", "y_masked", "kept_fraction")},
    **{f"evaluation/RI/{a}": ((N_UNSEEN, 3), "float64", (CHUNK, 3), np.nan) for a in ("y_kept", "road_keep",
                                                                                      "road_remove")},
    "evaluation/RI/curves": ((N_UNSEEN, 0, 0), "float64", (CHUNK, 1, 1), np.nan),  # zero-wide: chunks of 1
    "evaluation/RI/thumb": ((N_UNSEEN, 4, 4), "float32", (CHUNK, 4, 4), 0.0),
}


def prepare_all(store: FeatureStore, fingerprint: str = "a" * 16) -> dict[str, list[int]]:
    stages = [(INGEST.of("reference"), SIZES), (SIGNS.of("reference"), SIZES), (POLYTOPES.of(), SIZES),
              (INTERPRET.of("RI"), SIZES), (EVALUATE.of("RI"), {**SIZES, "N": N_UNSEEN})]
    return {stage.name: store.prepare(stage, fingerprint, sizes) for stage, sizes in stages}


def test_prepare_creates_the_arrays_the_tasks_created(tmp_path):
    store = FeatureStore(str(tmp_path / "s.zarr"))
    pending = prepare_all(store)
    assert pending == {"ingest-reference": [0, 1, 2], "signs-reference": [0, 1, 2], "polytopes": [0, 1, 2, 3, 4],
                       "interpret-RI": [0, 1, 2, 3, 4], "evaluate-RI": [0, 1]}
    for path, (shape, dtype, chunks, fill) in BY_HAND.items():
        arr = store.root[path]
        assert (arr.shape, str(arr.dtype), arr.chunks) == (shape, dtype, chunks), path
        assert np.array_equal(np.asarray(arr.fill_value), np.asarray(fill), equal_nan=True), path
    assert store.root["reference/features"].compressors == FAST_COMPRESSORS
    assert store.root["reference/logits"].compressors != FAST_COMPRESSORS
    assert "reference/ids" not in store and "interpretations/RI" not in store  # written whole by their tasks
    assert {s: store.shape(f"_done/{s}") for s in pending} == {s: (len(p),) for s, p in pending.items()}


def test_prepare_resumes_skips_and_resets(tmp_path):
    store = FeatureStore(str(tmp_path / "s.zarr"))
    stage = INGEST.of("reference")
    assert store.prepare(stage, "a" * 16, SIZES) == [0, 1, 2]
    store.write_region(stage["logits"], slice(4, 8), np.ones((4, 3)))
    store.mark_unit_done(stage.name, 1)
    assert store.prepare(stage, "a" * 16, SIZES) == [0, 2]  # resumed: unit 1's data kept
    assert store.read(stage["logits"])[4:8].sum() == 12
    for unit in (0, 2):
        store.mark_unit_done(stage.name, unit)
    store.finish_stage(stage.name)
    assert store.prepare(stage, "a" * 16, SIZES) == []  # complete for these inputs
    assert store.prepare(stage, "b" * 16, {**SIZES, "N": 5}) == [0, 1]  # other inputs: reset
    assert store.shape(stage["logits"]) == (5, 3) and not store.read(stage["logits"]).any()
    assert not store.attrs["stages"][stage.name]["complete"]


def test_concurrent_prepares_keep_every_stage_record(tmp_path):
    url = str(tmp_path / "s.zarr")
    FeatureStore(url)
    stages = [INGEST.of("reference"), INGEST.of("unseen"), SIGNS.of("reference"), SIGNS.of("unseen"),
              POLYTOPES.of(), INTERPRET.of("RI"), INTERPRET.of("Grad-CAM"), EVALUATE.of("RI")]
    stores = [FeatureStore(url) for _ in stages]  # each task opens its own, before any prepares
    start = threading.Barrier(len(stages))

    def prepare(store: FeatureStore, stage: Stage) -> None:
        start.wait()
        store.prepare(stage, "c" * 16, SIZES)
        store.set_attrs(**{f"prepared_{stage.name}": True})

    threads = [threading.Thread(target=prepare, args=a) for a in zip(stores, stages, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    attrs = FeatureStore(url, mode="r").attrs
    assert set(attrs["stages"]) == {s.name for s in stages}
    assert all(attrs[f"prepared_{s.name}"] for s in stages) and "store_id" in attrs
