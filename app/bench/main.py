"""``repint bench`` and ``python benchmarks/run.py``: the options, running the plan, writing
``bench.json`` and ``bench.md``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from repint.app.bench.common import CHILD_ENV, DEFAULT_OUT, load_average
from repint.app.bench.ingest import ingest_child
from repint.app.bench.targets import GROUPS, machine, plan, table

DESCRIPTION = "RepInt's performance suite: every stage as a ratio against its limit, measured side by side."


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repint bench", description=DESCRIPTION)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``repint bench`` and ``python benchmarks/run.py``."""
    p.add_argument("--quick", action="store_true", help="smaller sizes and 3 repeats: a few minutes on 2 cores")
    p.add_argument("--only", type=lambda v: set(v.split(",")), metavar="GROUP[,GROUP]",
                   help=f"run only these groups: {', '.join(GROUPS)} (default: all but demo)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"folder for bench.json and bench.md (default {DEFAULT_OUT})")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a target is not met")
    p.add_argument("--torch-threads", type=int, metavar="N",
                   help="torch.set_num_threads(N) in this process (default: torch's own, one per core)")
    p.add_argument("--ingest-child", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Run the plan, print the table, write ``bench.json`` and ``bench.md`` into ``args.out``."""
    if args.ingest_child:
        print(json.dumps(ingest_child(json.loads(args.ingest_child))))
        return 0
    if args.only and args.only - set(GROUPS):
        raise SystemExit(f"repint bench: unknown group(s) {', '.join(sorted(args.only - set(GROUPS)))}; "
                         f"choose from {', '.join(GROUPS)}")
    for k, v in CHILD_ENV.items():
        os.environ.setdefault(k, v)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    load_before, t0 = load_average(), time.perf_counter()
    results = []
    for group, step in plan(args.quick, args.only):
        t = time.perf_counter()
        r = step()
        r["group"], r["seconds"], r["load_average_after"] = group, round(time.perf_counter() - t, 1), load_average()
        results.append(r)
        ratio = "" if r["ratio"] is None else f" = {r['ratio']:.2f}"
        print(f"{r['stage']}: {r['measured']} vs {r['reference']}{ratio} ({r['seconds']:.0f} s, load "
              f"{r['load_average_after'][0]})", file=sys.stderr, flush=True)
    info = machine()
    load_after = load_average()
    met = sum(r["pass"] is True for r in results)
    judged = sum(r["pass"] is not None for r in results)
    foot = (f"{info['cpus']} CPUs, torch {info['torch']} ({info['torch_threads']} threads), "
            f"{'--quick, ' if args.quick else ''}{time.perf_counter() - t0:.0f} s; load average (1, 5, 15 min) "
            f"{load_before} before, {load_after} after; {met} of {judged} targets met.")
    md = table(results) + "\n\n" + foot + "\n"
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.md").write_text(md)
    (args.out / "bench.json").write_text(json.dumps(
        {"date": datetime.now(UTC).isoformat(timespec="seconds"),
         "options": {"quick": args.quick, "only": sorted(args.only) if args.only else None,
                     "torch_threads": args.torch_threads},
         "machine": {**info, "load_average_before": load_before, "load_average_after": load_after},
         "results": results}, indent=2, default=float) + "\n")
    print(f"written: {args.out / 'bench.json'}, {args.out / 'bench.md'}", file=sys.stderr)
    return 1 if args.strict and any(r["pass"] is False for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
