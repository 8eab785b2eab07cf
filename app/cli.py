"""``repint``: run representative interpretations from the command line (``repint ...`` or
``python -m repint.app.cli ...``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from repint.results import text_report

__all__ = ["main"]


def _quiet() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not os.environ.get("PREFECT_API_URL"):
        # the temporary in-process server's shutdown chatter is not the user's business
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")


def _run(cfg: Any, out: str, args: argparse.Namespace) -> int:
    from repint.config import override
    from repint.flows.preflight import make_folder, preflight

    # the command line's values go through the config's validation, and the device and the output are
    # checked, before anything is built or started (docs/bad-inputs.md)
    if getattr(args, "dask_address", None):
        override(cfg, "runtime.dask_address", args.dask_address, "--dask-address")
    if getattr(args, "threads", False):
        cfg.runtime.task_runner = "threads"
    if getattr(args, "runs", None) is not None:
        override(cfg, "evaluation.runs", args.runs, "--runs")
    preflight(cfg, out)

    from repint.flows import study
    from repint.flows.spec import build_spec

    spec = build_spec(cfg, out)
    _refuse_locked_stores(spec, cfg.evaluation.runs)
    make_folder(out, "--out")
    summary = study(spec, cfg.evaluation.runs)
    print(text_report(summary, out))
    return 0


def _refuse_locked_stores(spec: Any, runs: int) -> None:
    """Before any flow starts: a store another live run is writing is a one-line error (the pipeline
    takes the lock itself; this only spares the user a failed flow run)."""
    from repint.flows.studies import run_spec
    from repint.storage import StoreLock, StoreLockedError

    for i in range(runs):
        s = run_spec(spec, i, runs)
        try:
            StoreLock(s.store, s.storage_options).check()
        except StoreLockedError:
            raise
        except Exception:  # an unreachable store: the run itself says so, clearly
            continue


def cmd_demo(args: argparse.Namespace) -> int:
    from repint.config import demo_config

    cfg = demo_config()
    if args.quick:  # a smoke test of every stage: fewer images, one run, no variants
        cfg.data.limit = 400
        cfg.evaluation.runs = 1
        cfg.evaluation.variants = []
    return _run(cfg, args.out, args)


def cmd_run(args: argparse.Namespace) -> int:
    from repint.config import load_config

    return _run(load_config(args.config), args.out, args)


def cmd_train(args: argparse.Namespace) -> int:
    from repint.config import load_config, override
    from repint.flows.preflight import check_checkpoint, check_device
    from repint.flows.spec import data_sources, input_channels, normalisation
    from repint.tasks.train import train_model

    cfg = load_config(args.config)
    ckpt = args.out or cfg.model.checkpoint
    if args.seed is not None:
        override(cfg, "train.seed", args.seed, "--seed")
    if args.epochs is not None:
        override(cfg, "train.epochs", args.epochs, "--epochs")
    if not ckpt:
        raise ValueError("give --out CHECKPOINT or set model.checkpoint in the config")
    check_device(cfg.runtime.device)  # training runs here, whatever runtime.dask_address says
    check_checkpoint(ckpt, "--out" if args.out else "model.checkpoint")
    channels = input_channels(cfg)
    mean, std = normalisation(cfg, channels)
    ref, uns, _ = data_sources(cfg, channels)
    # train on the whole reference folder and test on the whole unseen folder: the per-class samples
    # are what RI interprets, not what the model learns from
    ref_spec, uns_spec = ref.spec(), uns.spec()
    if cfg.data.kind == "imagefolder":
        ref_spec, uns_spec = {**ref_spec, "per_class": None}, {**uns_spec, "per_class": None}
    meta = train_model.fn(ref_spec, uns_spec, cfg.model.architecture, cfg.data.image_size, tuple(mean),
                          tuple(std), cfg.train, checkpoint=ckpt, device=cfg.runtime.device)
    print(json.dumps({k: meta[k] for k in ("checkpoint", "train_accuracy", "test_accuracy", "train_seconds")
                      if k in meta}, indent=2))
    if os.environ.get("PREFECT_API_URL") and not args.no_event:
        from repint.flows.events import emit_checkpoint_updated

        event = emit_checkpoint_updated(meta["checkpoint"], meta)
        print(f"emitted {event.event if event else 'no'} event for {meta['checkpoint']} "
              f"to {os.environ['PREFECT_API_URL']}")
    return 0


def cmd_reinterpret(args: argparse.Namespace) -> int:
    from repint.config import load_config
    from repint.flows.entry import reinterpret
    from repint.flows.preflight import check_device, check_output

    cfg = load_config(args.config)  # read again by the flow; here its device and the output are checked first
    if not (args.dask_address or cfg.runtime.dask_address):
        check_device(cfg.runtime.device)
    check_output(args.out, cfg.store)
    result = reinterpret(config=args.config, out=args.out, checkpoint=args.checkpoint, force=args.force,
                         dask_address=args.dask_address)
    if result["status"] == "unchanged":
        print(f"no change since version {result['version']} ({result['out_dir']}): checkpoint, data and settings "
              "are the same; nothing re-interpreted")
        return 0
    print(f"version {result['version']} in {result['out_dir']} (changed: {', '.join(result['changed'])})")
    d = result.get("drift")
    if d:
        print(f"drift against version {d['previous_version']}: {d['n_matched']}/{d['n_centres']} centres matched, "
              f"mean Jaccard {d['mean_jaccard']}, mean heat-map correlation {d['mean_heatmap_correlation']}, "
              f"mean |change of |P|| {d['mean_abs_size_change']} (drift.md, report.html)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from repint.storage import StoreError
    from repint.storage.verify import verify_store

    _at_least(args.sample, 1, "--sample", "rows per split whose sign bits are recomputed")
    _at_least(args.seed, 0, "--seed", "the seed of the row sample")
    options = _json_object(args.storage_options, "--storage-options") if args.storage_options else None
    try:
        report = verify_store(args.store, options, sample=args.sample, seed=args.seed)
    except StoreError as exc:  # no store there, or one it cannot reach
        print(f"repint verify: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    return 0 if report.ok else 1


def _at_least(value: int | None, least: int, option: str, what: str) -> None:
    """A number from the command line that has a lower bound: a one-line error naming the option."""
    if value is not None and value < least:
        raise ValueError(f"{option}: must be at least {least}, got {value} ({what})")


def _json_object(text: str, option: str) -> dict[str, Any]:
    """A JSON object given on the command line (fsspec's storage options)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{option} is not valid JSON: {exc}; give a JSON object, e.g. "
                         "'{\"anon\": true}' (credentials: prefer the environment)") from None
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a JSON object ({{\"key\": value, ...}}), not {type(value).__name__} "
                         f"{text.strip()[:40]}")
    return value


def cmd_layers(args: argparse.Namespace) -> int:
    from repint.layers import LayerChoiceError, analyse_layers, format_reports, recommend

    if bool(args.config) == bool(args.model):
        raise ValueError("give a CONFIG or --model NAME (with --checkpoint/--weights), not both nor neither")
    _at_least(args.images, 1, "--images", "images on which boundaries are counted")
    _at_least(args.num_classes, 2, "--num-classes", "a classifier has at least two outputs")
    clf, images, what = _layers_inputs(args)
    reports = analyse_layers(clf, images)
    try:
        best, why = recommend(clf, images, reports), None
    except LayerChoiceError as exc:
        best, why = None, str(exc)
    if args.json:
        print(json.dumps({"model": what, "images": len(images), "recommended": best.name if best else None,
                          "refusal": why, "layers": [r.as_dict() for r in reports]}, indent=2))
        return 0 if best else 1
    print(f"Candidate layers ψ of {what} ({len(images)} images; boundaries: distinct linear boundaries of G "
          "at them, Eq. 2)\n")
    print(format_reports(reports, show_all=args.all))
    print()
    if best:
        print(f"recommended: layer: {best.name}  (the deepest {'x'.join(map(str, best.shape or ()))} feature map whose "
              "head is piecewise linear and not affine; `layer: auto` in a config picks it)")
        return 0
    print(f"no layer recommended: {why}")
    return 1


def _layers_inputs(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """The model wrapped in its normalisation, a few images, and how to name the model."""
    if args.config:
        from repint.config import load_config
        from repint.flows.spec import layer_inputs, model_section

        cfg = load_config(args.config)
        if args.checkpoint:
            cfg.model.checkpoint = args.checkpoint
        note = ""
        if cfg.model.checkpoint and "://" not in cfg.model.checkpoint and not Path(cfg.model.checkpoint).is_file():
            note = (f"; random weights: {cfg.model.checkpoint} does not exist yet (the cuts are the same, the "
                    "boundaries differ)")
            cfg.model.checkpoint = None
        model, ref, _, name = model_section(cfg)
        clf, images = layer_inputs(model, ref, args.images)
        return clf, images, f"{cfg.model.architecture} on {name}{note}"
    from repint.checkpoints import pretrained_weights
    from repint.model import Classifier, example_input
    from repint.nets import build_model, input_channels_of, load_network

    weights = pretrained_weights(args.model, args.weights) if args.weights else None
    size = args.image_size or (224 if weights else 32 if args.model.startswith("vgg-") else 64)
    n_classes = args.num_classes or (len(weights.meta["categories"]) if weights else 10)
    channels = args.channels or (3 if weights or ":" not in args.model else
                                 input_channels_of(build_model(args.model, n_classes, size)) or 3)
    mean, std = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) if weights else ([0.5] * channels, [0.25] * channels)
    net, _ = load_network({"architecture": args.model, "num_classes": n_classes, "image_size": size,
                           "mean": mean, "std": std, "checkpoint": args.checkpoint,
                           "weights": str(weights) if weights else None})
    images = example_input(len(mean), size, n=args.images).numpy()
    return Classifier(net, tuple(mean), tuple(std)).eval(), images, f"{args.model} ({size}x{size} random images)"


def cmd_serve(args: argparse.Namespace) -> int:
    from repint.app.serve import serve

    return serve(args.runs_dir, host=args.host, port=args.port)


def bench_parser() -> argparse.ArgumentParser:
    """``repint bench``'s own parser (its options: :func:`repint.app.bench.add_arguments`)."""
    from repint.app.bench import add_arguments

    p = argparse.ArgumentParser(prog="repint bench", description="Measure every stage against its limit in the "
                                "same run (plain torch inference, in-memory BLAS, a reference solver, one Dask "
                                "worker); print a markdown table and write bench.json and bench.md.")
    add_arguments(p)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    from repint.app.bench import run

    return run(bench_parser().parse_args(args.bench_args))  # main: the arguments after `bench`


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repint", description="Representative interpretations (RI, Lam et al. ICCV "
                                "2021) of CNN image classifiers: a Prefect pipeline over a Zarr feature store.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the whole pipeline on the embedded default (digits, a small VGG-style "
                       "CNN trained on first use)", description="Run ingest, boundaries, interpret and evaluate "
                       "on scikit-learn's digits with the project's small VGG-style CNN (trained and cached on "
                       "first use): RI, Grad-CAM, Grad-CAM++, Score-CAM and ACE over five runs, with RI's "
                       "variants, and print the Table-1-style AD/AI table (examples/demo.yaml spells out the "
                       "settings). No server or download needed.")
    d.add_argument("--out", default="runs/demo", help="output folder (store.zarr, summary.json, PNGs)")
    d.add_argument("--quick", action="store_true", help="a smoke test: 400 images, one run, no variants")
    d.add_argument("--threads", action="store_true", help="thread task runner instead of a local Dask cluster")
    d.add_argument("--dask-address", help="run the Dask-parallel tasks on an existing cluster (tcp://HOST:PORT; "
                   "docs/cluster.md)")
    d.add_argument("--runs", type=int, help="repeat with N seeds and report mean ± std (default 5)")
    r = sub.add_parser("run", help="run the pipeline on your own data and model (YAML config)",
                       description="Run the whole pipeline as configured; see examples/config.yaml.")
    r.add_argument("config", help="YAML config (see examples/config.yaml)")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--dask-address", help="run the Dask-parallel tasks on an existing cluster (tcp://HOST:PORT)")
    r.add_argument("--threads", action="store_true", help="thread task runner instead of a local Dask cluster")
    r.add_argument("--runs", type=int, help="repeat with N seeds and report mean ± std (default: evaluation.runs)")
    t = sub.add_parser("train", help="train the default VGG-style architecture on data.reference",
                       description="Train model.architecture on the reference ImageFolder (its labels) and "
                       "write a state-dict checkpoint that `repint run` loads with weights_only=True.")
    t.add_argument("config", help="YAML config")
    t.add_argument("--out", help="checkpoint path (default: model.checkpoint)")
    t.add_argument("--seed", type=int, help="training seed (default: train.seed)")
    t.add_argument("--epochs", type=int, help="epochs (default: train.epochs)")
    t.add_argument("--no-event", action="store_true", help="do not emit the repint.checkpoint.updated event "
                   "(emitted when PREFECT_API_URL is set, for deployments triggered by retraining)")
    ri = sub.add_parser("reinterpret", help="re-interpret only if the model, data or settings changed; new "
                        "version + drift report", description="Fingerprint the checkpoint, the data and the "
                        "settings; if they equal the last version's in OUT, stop; otherwise write OUT/vNNNN and a "
                        "drift report against the previous version (drift.md, report.html).")
    ri.add_argument("config", help="YAML config (e.g. examples/reinterpret.yaml)")
    ri.add_argument("--out", required=True, help="folder of the versions (OUT/versions.json, OUT/v0001, ...)")
    ri.add_argument("--checkpoint", help="override model.checkpoint")
    ri.add_argument("--force", action="store_true", help="write a new version even if nothing changed")
    ri.add_argument("--dask-address", help="run the Dask-parallel tasks on an existing cluster (tcp://HOST:PORT)")
    ri.set_defaults(fn=cmd_reinterpret)
    v = sub.add_parser("verify", help="check a feature store: layout, shapes, chunks, completion records, "
                       "fingerprints, sign bits", description="Check the store's layout, the shapes and dtypes of "
                       "its arrays, that every unit of each complete stage is recorded and every chunk is present "
                       "and decodes, that fingerprints are recorded, and that the sign bits of a sample of rows "
                       "equal recomputation from the features, W and b. Prints a report; exit code 0 when there is "
                       "no problem, 1 when there is one, 2 when there is no store (docs/store-layout.md).")
    v.add_argument("store", help="the store: a path or an fsspec URL (s3://bucket/path.zarr)")
    v.add_argument("--sample", type=int, default=64, help="rows per split whose sign bits are recomputed")
    v.add_argument("--seed", type=int, default=0, help="seed of the row sample")
    v.add_argument("--storage-options", help="fsspec options as JSON (credentials: prefer the environment)")
    v.add_argument("--json", action="store_true", help="the report as JSON")
    v.set_defaults(fn=cmd_verify)
    ly = sub.add_parser("layers", help="list the candidate layers ψ of a model and recommend one",
                        description="Trace the model and list every layer that could be ψ: its output shape, "
                        "whether the head G after it is piecewise linear (naming the op that breaks it) and whether "
                        "it is affine (RI collapses there), and how many distinct linear boundaries a few images "
                        "give; recommend the deepest spatial cut with a piecewise-linear, non-affine head "
                        "(`layer: auto` in a config). Exit code 1 when no layer qualifies.")
    ly.add_argument("config", nargs="?", help="YAML config (its model, checkpoint and reference images)")
    ly.add_argument("--model", help="instead of a config: vgg-small, a torchvision name or package.module:function")
    ly.add_argument("--checkpoint", help="weights to load (any format `repint run` reads)")
    ly.add_argument("--weights", help="torchvision's pretrained weights (DEFAULT, IMAGENET1K_V1, ...)")
    ly.add_argument("--num-classes", type=int, help="outputs of --model (default 10, or the weights' classes)")
    ly.add_argument("--image-size", type=int, help="side of the random images for --model (default 32 for vgg-*, "
                    "224 with --weights, else 64)")
    ly.add_argument("--channels", type=int, choices=(1, 3), help="input channels for --model (default: those of its "
                    "first convolution)")
    ly.add_argument("--images", type=int, default=8, help="images on which boundaries are counted (default 8)")
    ly.add_argument("--all", action="store_true", help="also list the layers a skip connection bypasses")
    ly.add_argument("--json", action="store_true", help="the analysis as JSON")
    ly.set_defaults(fn=cmd_layers)
    sv = sub.add_parser("serve", help="serve the reports under a runs folder over HTTP (read only), so that the "
                        "Prefect UI's report links open", description="Serve RUNS_DIR read only on HTTP: / lists "
                        "every run's report.html and the versions of `repint reinterpret` outputs (newest first); "
                        "set REPINT_REPORTS_URL=http://HOST:PORT where flows run and the repint-report artifacts "
                        "link here (docs/operations.md). Ctrl-C stops it.")
    sv.add_argument("runs_dir", metavar="RUNS_DIR", help="the folder the runs write into (e.g. runs)")
    sv.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: a free one)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                    "only)")
    sv.set_defaults(fn=cmd_serve)
    # bench's options are parsed by bench itself (cmd_bench): its package imports the whole stack (torch,
    # scikit-learn, ...), seconds that every other command would pay to start and again to exit
    bn = sub.add_parser("bench", help="the performance suite: every stage as a ratio against its limit, measured "
                        "side by side (docs/benchmarks.md)", add_help=False)
    bn.set_defaults(fn=cmd_bench)
    from repint.app import explain

    explain.add_parser(sub)
    d.set_defaults(fn=cmd_demo)
    r.set_defaults(fn=cmd_run)
    t.set_defaults(fn=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    import contextlib

    from repint.app.console import log_to_file, run_log, see_log, stops, write_traceback

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # a command that runs the pipeline: its full log (tracebacks) in a file, Ctrl-C/SIGTERM stop it
    log = run_log(args.command, getattr(args, "out", None), getattr(args, "config", None))
    if log is not None:
        log_to_file(log)
    _quiet()
    try:
        with stops(args.command, argv) if log is not None else contextlib.nullcontext():
            return int(args.fn(args))
    except BrokenPipeError:  # `repint layers ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        # bad input (config, data, model, checkpoint): one clear line, no traceback (docs/bad-inputs.md)
        if log is not None and log.exists():
            write_traceback(log, exc)
        print(f"repint {args.command}: error: {exc}{see_log(log)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if log is None:
            raise
        write_traceback(log, exc)  # a failure of the run itself: one line here, the traceback in the log
        print(f"repint {args.command}: error: {type(exc).__name__}: {exc}{see_log(log)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
