"""The feature store on object storage, against moto's real S3 server (a subprocess on 127.0.0.1).

Credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)
or from the config (``storage_options`` with ``${VAR}`` expanded at load time). The demo pipeline on
an S3 store gives what it gives on a local one, and no credential ends up in the run's files, the
store, the Prefect server (flow run parameters, task runs, artifacts, logs) or the log lines. A store
that cannot be reached (no such bucket, refused credentials, no endpoint) is a clear error when it is
opened. No test needs the network beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from conftest import tiny_config

from repint.storage import SECRET_MASK, FeatureStore, StoreAccessError, StoreError

BUCKET = "repint-test"
REGION = "us-east-1"
# fake credentials, distinct per route, long and unique enough to be searched for in every output
ENV_KEY, ENV_SECRET = "AKIAREPINTENVKEY0001", "env-secret-" + uuid.uuid4().hex
CFG_KEY, CFG_SECRET = "AKIAREPINTCFGKEY0002", "cfg-secret-" + uuid.uuid4().hex
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
            "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
            "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clear_fs_cache() -> None:
    """fsspec reuses S3 file systems (and their resolved credentials) per thread and options: tests
    that change the environment's credentials must not get one made under other credentials. The
    sessions of zarr's (asynchronous) ones are closed on zarr's event loop first."""
    import s3fs
    from zarr.core.sync import sync

    for fs in list(s3fs.S3FileSystem._cache.values()):
        client = getattr(fs, "_s3", None)
        if client is not None and fs.asynchronous:
            with contextlib.suppress(Exception):
                sync(client.__aexit__(None, None, None))
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory):
    """moto's S3 server as a subprocess on a free port, one bucket; stopped by its PID."""
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(endpoint + "/", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"moto server did not answer on {endpoint}: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="admin",
                          aws_secret_access_key="admin-secret")
        s3.create_bucket(Bucket=BUCKET)
        yield {"endpoint": endpoint, "s3": s3}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture
def env_credentials(moto_server, monkeypatch):
    """The environment route: credentials and the endpoint from AWS_* variables only."""
    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ENV_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server["endpoint"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    _clear_fs_cache()
    yield moto_server
    _clear_fs_cache()


@contextlib.contextmanager
def config_route_env(endpoint: str):
    """No AWS_* credentials at all (so only the config's can sign a request); the config's values
    come from variables of other names through ``${VAR}``."""
    with pytest.MonkeyPatch.context() as mp:
        for var in AWS_VARS:
            mp.delenv(var, raising=False)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("REPINT_TEST_S3_ENDPOINT", endpoint)
        mp.setenv("REPINT_TEST_S3_KEY", CFG_KEY)
        mp.setenv("REPINT_TEST_S3_SECRET", CFG_SECRET)
        _clear_fs_cache()
        try:
            yield
        finally:
            _clear_fs_cache()


CONFIG_OPTIONS = {"endpoint_url": "${REPINT_TEST_S3_ENDPOINT}", "key": "${REPINT_TEST_S3_KEY}",
                  "secret": "${REPINT_TEST_S3_SECRET}", "client_kwargs": {"region_name": REGION}}


def _keys(s3, prefix: str) -> list[str]:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def _arrays(store: FeatureStore) -> dict[str, np.ndarray]:
    import zarr

    return {path: np.asarray(node[...]) for path, node in store.root.members(max_depth=None)
            if isinstance(node, zarr.Array)}


def _exercise(store_url: str, options: dict | None = None) -> FeatureStore:
    """What the pipeline does to a store: a stage, chunk writes from threads (each with its own
    handle, as tasks have), completion records, string ids, attrs updates, a reset that deletes."""
    store = FeatureStore(store_url, options)
    store.begin_stage("ingest-reference", "fp1", 4, arrays=["reference/features"])
    store.create("reference/features", (8, 3), "f4", (2, 3), fill_value=0)
    store.write("reference/ids", np.asarray(["img-0", "img-1é", "a/b/c.png", ""], dtype=str))
    store.write("reference/labels", np.arange(4, dtype=np.int64))
    store.create("_scratch/old", (4,), "i8", (2,))[...] = 5

    def unit(i: int) -> None:
        s = FeatureStore(store_url, options)
        s.root["reference/features"][2 * i: 2 * i + 2] = np.full((2, 3), i + 1, np.float32)
        s.mark_unit_done("ingest-reference", i)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(unit, range(4)))
    store.finish_stage("ingest-reference")
    store.set_attrs(model={"architecture": "vgg-small", "mean": [0.5] * 3}, skipped_reference=[])
    store.begin_stage("signs-reference", "fpA", 2, arrays=["signs/reference"])
    store.create("signs/reference", (4, 2), "u1", (2, 2), fill_value=0)[...] = 7
    store.mark_unit_done("signs-reference", 0)
    # other inputs: the stage's arrays and completion records are deleted before anything is written
    store.begin_stage("signs-reference", "fpB", 2, arrays=["signs/reference"])
    store.create("signs/reference", (4, 2), "u1", (2, 2), fill_value=0)
    store.root["signs/reference"][0:2] = 3
    return FeatureStore(store_url, options, mode="r")


def test_env_route_round_trip_equals_local(env_credentials, tmp_path):
    """Credentials and endpoint only in the environment: everything the pipeline does to a store
    reads back from S3 exactly as from a local store."""
    s3 = env_credentials["s3"]
    url = f"s3://{BUCKET}/unit-{uuid.uuid4().hex[:8]}.zarr"
    remote, local = _exercise(url), _exercise(str(tmp_path / "local.zarr"))
    a_remote, a_local = _arrays(remote), _arrays(local)
    assert sorted(a_remote) == sorted(a_local)
    for path, value in a_local.items():
        assert a_remote[path].dtype == value.dtype, path
        np.testing.assert_array_equal(a_remote[path], value, err_msg=path)
    assert a_remote["reference/features"][:, 0].tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
    assert a_remote["reference/ids"].tolist() == ["img-0", "img-1é", "a/b/c.png", ""]
    assert a_remote["signs/reference"].tolist() == [[3, 3], [3, 3], [0, 0], [0, 0]]  # nothing of fpA is left
    assert remote.pending_units("signs-reference") == [0, 1]
    ra, la = remote.attrs, local.attrs
    assert ra["store_id"] != la["store_id"]
    for attrs in (ra, la):  # random per store and stage start
        attrs.pop("store_id")
        for info in attrs["stages"].values():
            info.pop("epoch")
    assert ra == la
    assert remote.stage_complete("ingest-reference", "fp1")
    assert not remote.stage_complete("signs-reference", "fpB")
    # the reset deleted the old chunks on S3 too (zarr writes no chunk that equals the fill value)
    prefix = url.split(f"{BUCKET}/", 1)[1]
    signs_chunks = [k for k in _keys(s3, prefix + "/signs/reference/") if "/c/" in k]
    assert sorted(signs_chunks) == [f"{prefix}/signs/reference/c/0/0"]
    assert not [k for k in _keys(s3, prefix + "/_done/signs-reference/") if "/c/" in k]  # fpA's record is gone
    with pytest.raises(StoreError, match="No RepInt store"):
        FeatureStore(f"s3://{BUCKET}/absent.zarr", mode="r")


def test_env_endpoint_for_s3_only(env_credentials, monkeypatch):
    """botocore (under s3fs 2026.9) honours AWS_ENDPOINT_URL_S3 as well as AWS_ENDPOINT_URL."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", env_credentials["endpoint"])
    _clear_fs_cache()
    url = f"s3://{BUCKET}/endpoint-{uuid.uuid4().hex[:8]}.zarr"
    FeatureStore(url).write("x", np.arange(3))
    assert FeatureStore(url, mode="r").read("x").tolist() == [0, 1, 2]
    assert _keys(env_credentials["s3"], url.split(f"{BUCKET}/", 1)[1] + "/x/")


def test_config_route_expands_environment_variables(moto_server, tmp_path):
    from repint.config import ConfigError, load_config

    url = f"s3://{BUCKET}/cfg-{uuid.uuid4().hex[:8]}.zarr"
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps({"store": url, "storage_options": {**CONFIG_OPTIONS, "note": "$${NOT_EXPANDED}"}}))
    with config_route_env(moto_server["endpoint"]):
        cfg = load_config(path)
        assert cfg.storage_options["key"] == CFG_KEY and cfg.storage_options["secret"] == CFG_SECRET
        assert cfg.storage_options["endpoint_url"] == moto_server["endpoint"]
        assert cfg.storage_options["note"] == "${NOT_EXPANDED}"
        cfg.storage_options.pop("note")
        store = FeatureStore(cfg.store, cfg.storage_options)
        store.write("x", np.arange(3))
        assert FeatureStore(cfg.store, cfg.storage_options, mode="r").read("x").tolist() == [0, 1, 2]
        assert CFG_SECRET not in repr(store.storage_options)
        # without the config's credentials nothing can sign: the config route is what was used
        with pytest.raises(StoreAccessError, match="No credentials"):
            FeatureStore(cfg.store, {"endpoint_url": moto_server["endpoint"]}, mode="r")
        path.write_text(json.dumps({"store": url, "storage_options": {"secret": "${REPINT_TEST_UNSET_VAR}"}}))
        with pytest.raises(ConfigError, match="storage_options.secret refers to the environment variable "
                                              "REPINT_TEST_UNSET_VAR, which is not set"):
            load_config(path)


def _spec(store: str, storage_options: dict, out_dir: str = "/tmp/out"):
    from repint.tasks.runspec import RunSpec

    return RunSpec(store=store, storage_options=storage_options, out_dir=out_dir, dataset="digits", reference={},
                   unseen={}, model={}, interpretation={}, evaluation={}, runtime={"chunk_size": 64})


def test_run_spec_serialises_credentials_masked():
    """What Prefect stores for a flow parameter (``jsonable_encoder`` -> ``model_dump(mode="json")``)
    shows ``**********``; the object keeps the real values, also after cloudpickle."""
    import cloudpickle
    from fastapi.encoders import jsonable_encoder

    from repint.flows import pipeline
    from repint.storage import reveal_secrets

    options = {"endpoint_url": "http://127.0.0.1:9000", "token": "session-token-123456",
               "client_kwargs": {"region_name": REGION, "aws_secret_access_key": "nested-secret-123456",
                                 "aws_session_token": "nested-token-123456"},
               "password": "pass-word-123456", "anon": False}
    spec = _spec(f"s3://{CFG_KEY}:{CFG_SECRET}@{BUCKET}/demo.zarr", options)
    assert spec.store == f"s3://{BUCKET}/demo.zarr"  # URL credentials moved into storage_options
    secrets = [CFG_KEY, CFG_SECRET, "session-token-123456", "nested-secret-123456", "nested-token-123456",
               "pass-word-123456"]
    for shown in (json.dumps(spec.model_dump(mode="json")), spec.model_dump_json(), repr(spec), str(spec),
                  json.dumps(jsonable_encoder(spec)), json.dumps(pipeline.serialize_parameters({"spec": spec}))):
        for secret in secrets:
            assert secret not in shown
        assert SECRET_MASK in shown
    dumped = spec.model_dump(mode="json")["storage_options"]
    assert dumped["key"] == dumped["secret"] == dumped["client_kwargs"]["aws_secret_access_key"] == SECRET_MASK
    assert dumped["endpoint_url"] == "http://127.0.0.1:9000" and dumped["client_kwargs"]["region_name"] == REGION
    for copy in (spec, cloudpickle.loads(cloudpickle.dumps(spec)), spec.model_copy(update={"store": "s3://b/x.zarr"})):
        real = reveal_secrets(copy.storage_options)
        assert real["key"] == CFG_KEY and real["secret"] == CFG_SECRET
        assert real["client_kwargs"]["aws_session_token"] == "nested-token-123456"
    # a store URL with credentials of another scheme keeps them (fsspec reads them) but never shows them
    ftp = _spec("ftp://user:ftp-pass-123456@host/path.zarr", {})
    assert "ftp-pass-123456" in ftp.store
    for shown in (ftp.model_dump_json(), repr(ftp), str(ftp)):
        assert "ftp-pass-123456" not in shown and "ftp://**********@host/path.zarr" in shown
    # an update that skipped validation is masked all the same
    raw = spec.model_copy(update={"storage_options": {"secret": "unvalidated-123456"}})
    assert "unvalidated-123456" not in raw.model_dump_json()


@contextlib.contextmanager
def moto_auth(endpoint: str):
    """From now on moto checks every request's signature against its IAM users (until the end)."""
    def reset(value: bytes) -> None:
        req = urllib.request.Request(endpoint + "/moto-api/reset-auth", data=value, method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=10).read()

    reset(b"0")
    try:
        yield
    finally:
        reset(b"inf")


@pytest.mark.slow
def test_credentials_refused_and_pickled_spec_reaches_fsspec(moto_server, tmp_path):
    """With moto checking signatures: a spec cloudpickled to another process (as to a Dask worker)
    still signs with the config's credentials; wrong ones are a clear error when the store is opened."""
    import boto3
    import cloudpickle

    endpoint = moto_server["endpoint"]
    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="admin",
                       aws_secret_access_key="admin-secret")
    user = "repint-" + uuid.uuid4().hex[:8]
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    access = iam.create_access_key(UserName=user)["AccessKey"]
    url = f"s3://{BUCKET}/auth-{uuid.uuid4().hex[:8]}.zarr"
    good = {"endpoint_url": endpoint, "key": access["AccessKeyId"], "secret": access["SecretAccessKey"],
            "client_kwargs": {"region_name": REGION}}
    with config_route_env(endpoint):
        FeatureStore(url, good).write("x", np.arange(4))
        spec_file = tmp_path / "spec.pkl"
        spec_file.write_bytes(cloudpickle.dumps(_spec(url, good)))
        with moto_auth(endpoint):
            script = textwrap.dedent(f"""
                import pickle, numpy as np
                from repint.tasks.common import open_store
                spec = pickle.load(open({str(spec_file)!r}, "rb"))
                store = open_store(spec)
                store.root["x"][0] = 7
                print("read", open_store(spec, mode="r").read("x").tolist())
            """)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "REPINT_TEST_"))}
            done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                  timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            assert "read [7, 1, 2, 3]" in done.stdout
            for options in ({**good, "secret": "wrong-" + access["SecretAccessKey"]},
                            {**good, "key": "AKIAUNKNOWNKEY000000"}):
                with pytest.raises(StoreAccessError) as err:
                    FeatureStore(url, options, mode="r")
                message = str(err.value)
                assert "was refused" in message and "Check the credentials" in message and url in message
                assert access["SecretAccessKey"] not in message and "Traceback" not in message
                assert err.value.__cause__ is None and err.value.__suppress_context__


def test_missing_bucket_is_a_clear_error(env_credentials):
    for mode in ("a", "r"):
        with pytest.raises(StoreAccessError) as err:
            FeatureStore("s3://no-such-bucket-repint/demo.zarr", mode=mode)
        message = str(err.value)
        assert "The bucket 'no-such-bucket-repint' of the store s3://no-such-bucket-repint/demo.zarr does not " \
               f"exist at {env_credentials['endpoint']}" in message
        assert "Create it first" in message and "botocore" not in message and ENV_SECRET not in message
        assert isinstance(err.value, ValueError) and isinstance(err.value, StoreError)  # `repint run: error: ...`
    # credentials in the URL are used, and redacted in the message
    with pytest.raises(StoreAccessError) as err:
        FeatureStore(f"s3://{CFG_KEY}:{CFG_SECRET}@no-such-bucket-repint/demo.zarr", mode="r")
    assert CFG_SECRET not in str(err.value) and CFG_KEY not in str(err.value)


def test_unreachable_endpoint_is_a_clear_error(env_credentials):
    options = {"endpoint_url": f"http://127.0.0.1:{_free_port()}",
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}
    with pytest.raises(StoreAccessError, match="Cannot reach the store .* Is the server running"):
        FeatureStore(f"s3://{BUCKET}/demo.zarr", options, mode="r")


# end to end ---------------------------------------------------------------------------------------
class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:
            self.lines.append(str(record.msg))


def _demo_config(**top):
    from repint.config import Config

    cfg = tiny_config(200, 2, 30)  # RI and Grad-CAM (the default methods), thread runner
    cfg.runtime.chunk_size = 64  # several chunks written by concurrent tasks
    cfg.evaluation.case_studies = 1
    return Config.model_validate({**cfg.model_dump(), **top})  # validated as a loaded config would be


@pytest.fixture(scope="module")
def demo_runs(prefect_harness, repint_cache, moto_server, tmp_path_factory):
    """`repint run`'s flow (study -> pipeline, one run) once on a local store, once on
    ``s3://repint-test/demo.zarr`` with the credentials from the config through ``${VAR}``."""
    from repint.flows import study
    from repint.flows.spec import build_spec

    local_out = tmp_path_factory.mktemp("local")
    local_spec = build_spec(_demo_config(), local_out)
    local = study(local_spec)

    s3_out = tmp_path_factory.mktemp("s3")
    collect = _Collect()
    loggers = [logging.getLogger(), logging.getLogger("prefect"), logging.getLogger("repint")]
    with config_route_env(moto_server["endpoint"]):
        cfg = _demo_config(store=f"s3://{BUCKET}/demo.zarr", storage_options=CONFIG_OPTIONS)
        assert cfg.storage_options["secret"] == CFG_SECRET
        s3_spec = build_spec(cfg, s3_out)
        for lg in loggers:
            lg.addHandler(collect)
        try:
            remote = study(s3_spec)
        finally:
            for lg in loggers:
                lg.removeHandler(collect)
        s3_store = FeatureStore(s3_spec.store, s3_spec.storage_options, mode="r")  # keeps its file system
    local_store = FeatureStore(local_spec.store, mode="r")
    return {"local": (local_out, local, local_store), "s3": (s3_out, remote, s3_store), "spec": s3_spec,
            "log_lines": collect.lines}


def _comparable(summary: dict) -> dict:
    keep = ("mAD", "mAI", "covered_unseen", "n", "runs", "per_run")
    return {"methods": {m: {k: r[k] for k in keep if k in r} for m, r in summary["methods"].items()},
            **{k: summary[k] for k in ("dataset", "n_reference", "n_unseen", "n_classes", "n_interpretations", "q",
                                       "q_sampling", "n_boundaries", "n_distinct_boundaries", "polytopes",
                                       "skipped_images", "q_clamped")}}


@pytest.mark.slow
def test_s3_run_summary_equals_local(demo_runs):
    (l_out, local, _), (s_out, remote, _) = demo_runs["local"], demo_runs["s3"]
    assert set(local["methods"]) == {"RI", "Grad-CAM"}
    assert _comparable(remote) == _comparable(local)
    assert remote["store"] == f"s3://{BUCKET}/demo.zarr"
    on_disk = json.loads((s_out / "summary.json").read_text())
    assert _comparable(on_disk) == _comparable(json.loads((l_out / "summary.json").read_text()))
    assert (s_out / "report.html").stat().st_size > 1000 and (s_out / "records.csv").is_file()


@pytest.mark.slow
def test_s3_store_arrays_equal_local(demo_runs, moto_server):
    _, _, local = demo_runs["local"]
    _, _, remote = demo_runs["s3"]
    a_local, a_remote = _arrays(local), _arrays(remote)
    assert sorted(a_local) == sorted(a_remote)
    for group in ("signs/reference", "signs/unseen", "polytopes/", "evaluation/RI/", "evaluation/Grad-CAM/",
                  "reference/ids", "centres/"):
        assert any(p.startswith(group) for p in a_remote), group
    for path, value in a_local.items():
        np.testing.assert_array_equal(a_remote[path], value, err_msg=path)
    for stage, info in local.attrs["stages"].items():
        assert remote.attrs["stages"][stage]["complete"] == info["complete"] is True, stage
        assert remote.attrs["stages"][stage]["fingerprint"] == info["fingerprint"], stage
    assert _keys(moto_server["s3"], "demo.zarr/signs/reference/c/")  # the chunks really are on S3


def _prefect_records() -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    out: dict[str, list] = {"flow_runs": [], "task_runs": [], "artifacts": [], "logs": []}
    with get_client(sync_client=True) as client:
        for name, read in (("flow_runs", client.read_flow_runs), ("task_runs", client.read_task_runs),
                           ("artifacts", client.read_artifacts), ("logs", client.read_logs)):
            offset = 0
            while True:
                page = read(limit=200, offset=offset)
                out[name] += [r.model_dump(mode="json") for r in page]
                if len(page) < 200:
                    break
                offset += 200
    return {k: json.dumps(v) for k, v in out.items()}


@pytest.mark.slow
def test_credentials_never_leak(demo_runs, moto_server):
    s_out, _, _ = demo_runs["s3"]
    secrets = (CFG_SECRET, CFG_KEY)
    # the run's files: summary.json, report.html, records.csv, figures
    files = [p for p in Path(s_out).rglob("*") if p.is_file()]
    assert {"summary.json", "report.html", "records.csv"} <= {p.name for p in files}
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, path
    # the store: every object on S3 (attrs, arrays)
    s3 = moto_server["s3"]
    keys = _keys(s3, "demo.zarr/")
    assert any(k.endswith("zarr.json") for k in keys)
    for key in keys:
        data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        for secret in secrets:
            assert secret.encode() not in data, key
    # the Prefect server: flow run parameters (the RunSpec), task runs, artifacts, logs
    records = _prefect_records()
    assert all(len(json.loads(text)) > 0 for text in records.values()), {k: len(v) for k, v in records.items()}
    for name, text in records.items():
        for secret in secrets:
            assert secret not in text, name
    runs = [r for r in json.loads(records["flow_runs"]) if isinstance(r["parameters"].get("spec"), dict)
            and r["parameters"]["spec"].get("store") == f"s3://{BUCKET}/demo.zarr"]
    assert {r["name"].split("-")[0] for r in runs} >= {"study", "pipeline", "ingest", "boundaries", "interpret",
                                                       "evaluate"}
    specs = [r["parameters"]["spec"] for r in runs]
    for spec in specs:
        assert spec["storage_options"]["key"] == spec["storage_options"]["secret"] == SECRET_MASK
        assert spec["storage_options"]["endpoint_url"] == moto_server["endpoint"]
    assert "repint-summary" in records["artifacts"] and "repint-report" in records["artifacts"]
    # the log lines of the run, as emitted in this process
    assert demo_runs["log_lines"]
    for line in demo_runs["log_lines"]:
        for secret in secrets:
            assert secret not in line


@pytest.mark.slow
def test_repint_run_reports_a_missing_bucket(demo_runs, moto_server, tmp_path, capsys):
    """`repint run` on a config whose bucket does not exist: one line saying what to do, exit code 2."""
    from repint.app.cli import main

    data = _demo_config(store="s3://no-such-bucket-repint/demo.zarr").model_dump(mode="json")
    data["storage_options"] = CONFIG_OPTIONS  # ${VAR}: expanded when `repint run` loads the file
    path = tmp_path / "missing.yaml"
    path.write_text(json.dumps(data))
    with mock.patch.dict(os.environ), config_route_env(moto_server["endpoint"]):  # main() sets PREFECT_* too
        code = main(["run", str(path), "--out", str(tmp_path / "out"), "--threads"])
    err = capsys.readouterr().err
    assert code == 2
    assert "repint run: error: The bucket 'no-such-bucket-repint' of the store s3://no-such-bucket-repint/demo.zarr " \
           "does not exist" in err
    assert CFG_SECRET not in err
