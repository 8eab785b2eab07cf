"""The layers import only downwards: core (``repint/``) <- ``repint.storage`` <- ``repint.tasks`` <- ``repint.flows``
<- ``repint.app`` (README, "How it is built"). Every module of a layer is imported in a fresh interpreter, and
none of the modules forbidden to it may end up in ``sys.modules``; a failure names the module that pulled the
forbidden one in and the chain of imports through which it came."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

# The installed sub-packages that live in other folders: not part of the core, whatever repint.__path__ says.
OTHER_LAYERS = ("repint.storage", "repint.tasks", "repint.flows", "repint.app")
ORCHESTRATION = ("prefect", "prefect_dask", "dask", "distributed")

LAYERS = {
    # the core: plain numpy/torch; it reads and writes no store, so Zarr is forbidden too
    "repint": (*ORCHESTRATION, "zarr", *OTHER_LAYERS),
    "repint.storage": (*ORCHESTRATION, "repint.tasks", "repint.flows", "repint.app"),
    "repint.tasks": ("repint.flows", "repint.app"),
    "repint.flows": ("repint.app",),
}

# Runs in a fresh interpreter. argv[1]: JSON {"package", "modules" (null: every module of the layer), "forbidden"}.
# Prints JSON {"modules": [imported], "pulled": {forbidden module: [import chain, outermost first]}}.
PROBE = r'''
import importlib, json, pkgutil, sys

args = json.loads(sys.argv[1])
forbidden, exclude = tuple(args["forbidden"]), tuple(args["exclude"])
pulled = {}


def _is(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class Recorder:
    """Finds nothing; records, for the first import of each forbidden module, who was importing it."""

    def find_spec(self, name, path=None, target=None):
        if _is(name, forbidden) and not any(_is(name, (k,)) for k in pulled):
            chain, f = [], sys._getframe(1)
            while f is not None:
                mod = f.f_globals.get("__name__", "?")
                where = mod if f.f_code.co_name == "<module>" else f"{mod}.{f.f_code.co_name}()"
                if not mod.startswith(("importlib", "_frozen_importlib")) and mod != "__main__" and (
                        not chain or chain[-1] != where):
                    chain.append(where)
                f = f.f_back
            pulled[name] = [*reversed(chain), name]
        return None


sys.meta_path.insert(0, Recorder())
modules = args["modules"]
if modules is None:
    package = importlib.import_module(args["package"])
    modules = [args["package"]] + sorted(
        m.name for m in pkgutil.walk_packages(package.__path__, args["package"] + ".")
        if not _is(m.name, exclude) and not m.name.endswith(".__main__"))
for name in modules:
    importlib.import_module(name)
found = sorted(m for m in sys.modules if _is(m, forbidden))
for m in found:  # imported some other way than through a finder (should not happen): no chain known
    if not any(_is(m, (k,)) for k in pulled):
        pulled[m] = [m]
print(json.dumps({"modules": modules, "pulled": pulled}))
'''


def _probe(package: str, forbidden: tuple[str, ...], modules: list[str] | None = None) -> dict:
    args = {"package": package, "modules": modules, "forbidden": forbidden,
            "exclude": [p for p in OTHER_LAYERS if p != package]}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"importing the modules of {package} failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _culprits(package: str, forbidden: tuple[str, ...], modules: list[str]) -> list[str]:
    """Each module of the layer in its own interpreter: which of them pulls in which forbidden module, and how."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda name: _probe(package, forbidden, [name])["pulled"], modules))
    return [f"  {name} imports {bad}: {' -> '.join(chain)}"
            for name, pulled in zip(modules, results, strict=True) for bad, chain in sorted(pulled.items())]


@pytest.mark.parametrize("package", list(LAYERS))
def test_a_layer_imports_nothing_above_it(package):
    forbidden = LAYERS[package]
    out = _probe(package, forbidden)
    modules = out["modules"]
    assert len(modules) > 2, f"found no modules under {package}: {modules}"
    if package == "repint":  # the walk stays in the core's own folder
        assert {"repint.solver", "repint.methods.ri"} <= set(modules)
        assert not [m for m in modules if m.startswith(OTHER_LAYERS)], modules
    if out["pulled"]:
        detail = _culprits(package, forbidden, modules) or [
            f"  {bad}: {' -> '.join(chain)}" for bad, chain in sorted(out["pulled"].items())]
        pytest.fail(f"{package} must not import {', '.join(sorted(out['pulled']))} (allowed: only the layers below "
                    f"it, README 'How it is built'):\n" + "\n".join(detail))


def test_the_probe_names_the_culprit(tmp_path, monkeypatch):
    """The check can fail: a module that imports Dask is caught and named, with its chain."""
    (tmp_path / "layering_bad_module.py").write_text("import json\nimport dask  # noqa: F401\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p))
    lines = _culprits("repint", LAYERS["repint"], ["repint.solver", "layering_bad_module"])
    assert lines and all(line.startswith("  layering_bad_module imports dask") for line in lines), lines
    assert "layering_bad_module -> dask" in lines[0]
