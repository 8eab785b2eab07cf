"""Bad configs and command lines (issue #15): each is a one-line ``repint <command>: error: ...`` with exit
status 2 that names the config key or the option, found before any flow, store or server starts (so these
tests are quick and need no Prefect server), and nothing is created where the output would go.

docs/bad-inputs.md lists these cases under "Configs" and "Command line and output".
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
import yaml

from repint.app.cli import main
from repint.config import Config, ConfigError, load_config, override
from repint.flows import preflight
from repint.flows.preflight import check_device, check_output, make_folder

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, cfg: dict | str) -> Path:
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return path


def _small(tmp_path: Path, name: str = "config.yaml", **keys: object) -> Path:
    """A small valid digits config with ``keys`` (a section's keys, or a top-level value) changed."""
    cfg: dict = {"data": {"kind": "digits", "limit": 60}, "interpretation": {"q": 10, "interpretations_per_class": 1},
                 "evaluation": {"methods": ["RI"], "case_studies": 0}, "runtime": {"task_runner": "threads"}}
    for key, value in keys.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return _write(tmp_path / name, cfg)


def _error(args: list[str], capsys, *names: str) -> str:
    """Run the CLI; assert exit status 2 and one line ``repint <cmd>: error: ...`` naming every ``names``."""
    rc = main(args)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2, (rc, captured.out, err)
    assert err.startswith(f"repint {args[0]}: error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    for name in names:
        assert name in err, (name, err)
    return err


# ------------------------------------------------------------------------- data.kind and empty configs
@pytest.mark.parametrize("key", ["reference", "unseen"])
@pytest.mark.parametrize("command", ["run", "train"])
def test_a_data_path_without_kind_is_not_run_on_digits(tmp_path, capsys, key, command):
    cfg = _write(tmp_path / "c.yaml", {"data": {key: str(tmp_path / "images")}, "model": {"checkpoint": "m.pt"}})
    out = tmp_path / "o"
    args = [command, str(cfg), "--out", str(out / "m.pt" if command == "train" else out)]
    err = _error(args, capsys, f"data.{key} is set", "data.kind is digits (the default)", "imagefolder", "arrays")
    assert f"Config {cfg} is invalid" in err
    assert not out.exists()


def test_kind_digits_with_a_path_is_refused_and_plain_digits_stays_valid(tmp_path):
    cfg = _write(tmp_path / "c.yaml", {"data": {"kind": "digits", "reference": "r"}})
    with pytest.raises(ConfigError, match=r"data\.reference is set but data\.kind is digits, the embedded"):
        load_config(cfg)
    assert load_config(_write(tmp_path / "d.yaml", {"data": {"kind": "digits"}})).data.kind == "digits"
    assert load_config(_write(tmp_path / "e.yaml", {"data": {"limit": 60}})).data.kind == "digits"


@pytest.mark.parametrize("text", ["", "  \n\n", "# only a comment\n# and another\n", "{}\n"],
                         ids=["empty", "blank", "comments", "empty-mapping"])
def test_an_empty_config_is_an_error_not_the_demo(tmp_path, capsys, text):
    cfg = _write(tmp_path / "c.yaml", text)
    _error(["run", str(cfg), "--out", str(tmp_path / "o")], capsys, f"Config {cfg} is empty",
           "examples/config.yaml", "repint demo")
    assert not (tmp_path / "o").exists()


def test_the_example_configs_still_load():
    paths = sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("benchmarks/*.yaml")])
    assert paths
    for path in paths:
        cfg = load_config(path)
        assert (cfg.data.reference is None) == (cfg.data.kind == "digits"), path


# --------------------------------------------------------------------------------- command-line values
@pytest.mark.parametrize("runs", ["-1", "0"])
def test_run_runs_is_validated_like_the_config(tmp_path, capsys, runs):
    out = tmp_path / "o"
    _error(["run", str(_small(tmp_path)), "--out", str(out), "--runs", runs], capsys,
           f"--runs: must be at least 1, got {runs}")
    assert not out.exists()


def test_demo_runs_zero_is_refused(tmp_path, capsys):
    out = tmp_path / "o"
    _error(["demo", "--quick", "--out", str(out), "--runs", "0"], capsys, "--runs: must be at least 1, got 0")
    assert not out.exists()


@pytest.mark.parametrize("option, value, expect", [
    ("--epochs", "0", "--epochs: must be at least 1, got 0"),
    ("--seed", "-1", "--seed: must be at least 0, got -1"),
])
def test_train_options_are_validated_and_nothing_is_written(tmp_path, capsys, option, value, expect):
    ckpt = tmp_path / "m.pt"
    _error(["train", str(_small(tmp_path)), "--out", str(ckpt), option, value], capsys, expect)
    assert not ckpt.exists() and not ckpt.with_suffix(".json").exists()


def test_train_without_a_checkpoint_path_is_a_one_line_error(tmp_path, capsys):
    _error(["train", str(_small(tmp_path))], capsys, "--out CHECKPOINT", "model.checkpoint")


def test_override_keeps_the_section_and_its_set_fields():
    cfg = Config()
    override(cfg, "evaluation.runs", 3, "--runs")
    assert cfg.evaluation.runs == 3 and "runs" in cfg.evaluation.model_fields_set
    with pytest.raises(ValueError, match=r"^--epochs: must be at least 1, got -2$"):
        override(cfg, "train.epochs", -2, "--epochs")
    assert cfg.train.epochs == 12


@pytest.mark.parametrize("sample", ["-5", "0"])
def test_verify_sample_must_be_positive(tmp_path, capsys, sample):
    _error(["verify", str(tmp_path / "s.zarr"), "--sample", sample], capsys, "--sample: must be at least 1",
           f"got {sample}")


@pytest.mark.parametrize("text, expect", [
    ("{bad json", "--storage-options is not valid JSON: Expecting property name"),
    ("[1, 2]", "--storage-options must be a JSON object"),
    ('"anon"', "--storage-options must be a JSON object"),
], ids=["syntax", "list", "string"])
def test_verify_storage_options_must_be_a_json_object(tmp_path, capsys, text, expect):
    err = _error(["verify", str(tmp_path / "s.zarr"), "--storage-options", text], capsys, expect)
    assert "JSON object" in err


@pytest.mark.parametrize("option, value, least", [("--images", "0", 1), ("--num-classes", "1", 2)])
def test_layers_counts_have_a_lower_bound(capsys, option, value, least):
    _error(["layers", "--model", "vgg-small", option, value], capsys,
           f"{option}: must be at least {least}, got {value}")


@pytest.mark.parametrize("section", ["train", "interpretation"])
def test_negative_seeds_are_refused_at_load(tmp_path, capsys, section):
    _error(["run", str(_small(tmp_path, **{section: {"seed": -1}})), "--out", str(tmp_path / "o")], capsys,
           f"{section}.seed: Input should be greater than or equal to 0")


# ---------------------------------------------------------------------------------- evaluation lists
@pytest.mark.parametrize("evaluation, key, expect", [
    ({"methods": ["RI", "Grad-KAM"]}, "evaluation.methods", "unknown method 'Grad-KAM'; available: "),
    ({"methods": []}, "evaluation.methods", "list at least one method, e.g. [RI, Grad-CAM]"),
    ({"keep_fractions": []}, "evaluation.keep_fractions", "at least 1 item"),
    ({"baselines": []}, "evaluation.baselines", "at least 1 item"),
], ids=["unknown-method", "no-methods", "no-keep-fractions", "no-baselines"])
def test_evaluation_lists_are_checked_at_load(tmp_path, capsys, evaluation, key, expect):
    out = tmp_path / "o"
    _error(["run", str(_small(tmp_path, evaluation=evaluation)), "--out", str(out)], capsys, key, expect)
    assert not out.exists()


def test_empty_metrics_and_variants_stay_allowed(tmp_path):
    cfg = load_config(_small(tmp_path, evaluation={"metrics": [], "variants": []}))
    assert cfg.evaluation.metrics == [] and cfg.evaluation.variants == []


# ------------------------------------------------------------------------------------- runtime.device
@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda0", "tpu", 0])
def test_an_unknown_device_is_an_error_listing_the_devices(tmp_path, capsys, device):
    _error(["run", str(_small(tmp_path, runtime={"device": device})), "--out", str(tmp_path / "o")], capsys,
           "runtime.device", "auto, cpu, cuda, cuda:N, mps")


def test_device_names_are_normalised():
    assert Config.model_validate({"runtime": {"device": " CUDA:1 "}}).runtime.device == "cuda:1"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible: `cuda` is valid here")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
@pytest.mark.parametrize("command", ["run", "train"])
def test_cuda_without_a_gpu_is_an_error_before_any_stage(tmp_path, capsys, device, command):
    out = tmp_path / ("o/m.pt" if command == "train" else "o")
    _error([command, str(_small(tmp_path, runtime={"device": device})), "--out", str(out)], capsys,
           f"runtime.device: {device}: no CUDA GPU is visible to torch (torch {torch.__version__}",
           "set runtime.device: cpu or auto")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="an Apple MPS device is available here")
def test_mps_without_apple_silicon_is_an_error(tmp_path, capsys):
    _error(["run", str(_small(tmp_path, runtime={"device": "mps"})), "--out", str(tmp_path / "o")], capsys,
           "runtime.device: mps: no Apple MPS device is available to torch", "cpu or auto")


def test_a_gpu_index_beyond_the_count_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device("cuda:1")
    check_device("cuda")
    with pytest.raises(ValueError, match=r"^runtime\.device: cuda:2: torch sees 2 CUDA GPUs \(cuda:0, cuda:1\)"):
        check_device("cuda:2")
    check_device("cpu")
    check_device("auto")


def test_a_remote_cluster_brings_its_own_devices(tmp_path):
    cfg = load_config(_small(tmp_path, runtime={"device": "cuda", "dask_address": "tcp://127.0.0.1:8786"}))
    preflight.preflight(cfg, tmp_path / "o")  # the workers' GPUs, not this machine's
    assert not (tmp_path / "o").exists()


# -------------------------------------------------------------------------------------- the output
def test_out_that_is_a_file_is_an_error(tmp_path, capsys):
    (tmp_path / "o").write_text("not a folder")
    _error(["run", str(_small(tmp_path)), "--out", str(tmp_path / "o")], capsys,
           f"--out {tmp_path / 'o'} is a file, not a folder")
    assert (tmp_path / "o").read_text() == "not a folder"


def test_reinterpret_checks_its_output_first(tmp_path, capsys):
    (tmp_path / "o").write_text("not a folder")
    _error(["reinterpret", str(_small(tmp_path)), "--out", str(tmp_path / "o")], capsys,
           f"--out {tmp_path / 'o'} is a file, not a folder")


def test_out_under_a_file_is_an_error(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    _error(["run", str(_small(tmp_path)), "--out", str(tmp_path / "f" / "o")], capsys,
           "--out", f"{tmp_path / 'f'} is a file, so no folder can be made in it")


def test_a_file_where_the_default_store_goes_is_an_error(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "store.zarr").write_text("x")
    _error(["run", str(_small(tmp_path)), "--out", str(tmp_path / "o")], capsys,
           "--out", "store.zarr is a file, not a Zarr store")


def test_config_store_that_is_a_file_is_an_error(tmp_path, capsys):
    (tmp_path / "s.zarr").write_text("x")
    out = tmp_path / "o"
    cfg = _small(tmp_path, store=str(tmp_path / "s.zarr"))
    _error(["run", str(cfg), "--out", str(out)], capsys, f"store {tmp_path / 's.zarr'} is a file, not a folder")
    assert not out.exists()


def _chmod_stops_writes(path: Path) -> bool:
    return not os.access(path, os.W_OK)


def test_out_in_a_folder_without_write_permission_is_an_error(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if not _chmod_stops_writes(locked):
            pytest.skip("running as root: chmod 555 does not stop writes (the next tests cover the code path)")
        _error(["run", str(_small(tmp_path)), "--out", str(locked / "o")], capsys,
               f"--out {locked / 'o'}: cannot write in {locked}", "no write permission", "chmod u+w")
        assert not (locked / "o").exists()
    finally:
        locked.chmod(0o755)


def test_no_write_permission_as_access_reports_it(tmp_path, capsys, monkeypatch):
    """The same code path under root: os.access as an unprivileged user would answer."""
    real = os.access
    monkeypatch.setattr(preflight.os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path else real(p, mode))
    _error(["run", str(_small(tmp_path)), "--out", str(tmp_path / "o")], capsys,
           f"--out {tmp_path / 'o'}: cannot write in {tmp_path}", "no write permission", "chmod u+w")
    assert not (tmp_path / "o").exists()


def test_out_where_no_folder_can_be_made_is_an_error(tmp_path, capsys):
    """/proc takes no new folders, for root too (where the mode bits do not stop it)."""
    _error(["run", str(_small(tmp_path)), "--out", "/proc/repint-test-out"], capsys,
           "--out /proc/repint-test-out: cannot write in /proc")


def test_a_read_only_file_system_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "_read_only", lambda p: True)
    with pytest.raises(ValueError, match=r"^--out .*: cannot write in .*: it is on a read-only file system"):
        check_output(tmp_path / "o")
    monkeypatch.setattr(preflight, "_read_only", lambda p: False)
    check_output(tmp_path / "o", "s3://bucket/store.zarr")  # an object store is not checked here


def test_mkdir_failures_name_the_option_and_path(tmp_path, monkeypatch):
    def read_only(self, *a, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(ValueError, match=r"^--out .*o: cannot create the folder .*o: Read-only file system; "
                                         r"choose another --out$"):
        make_folder(tmp_path / "o")


@pytest.mark.parametrize("where", ["folder", "under-a-file"])
def test_train_checkpoint_path_is_checked_before_training(tmp_path, capsys, where):
    if where == "folder":
        (tmp_path / "m.pt").mkdir()
        target, expect = tmp_path / "m.pt", "is a folder, not a file"
    else:
        (tmp_path / "f").write_text("x")
        target, expect = tmp_path / "f" / "m.pt", "is a file, so no folder can be made in it"
    _error(["train", str(_small(tmp_path)), "--out", str(target)], capsys, "--out", expect)
    cfg = _small(tmp_path, "c2.yaml", model={"checkpoint": str(target)})
    _error(["train", str(cfg)], capsys, "model.checkpoint", expect)
