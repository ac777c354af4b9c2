"""No credential is ever written anywhere: an ingest and a tiny training run from S3 with recognisable fake keys
(in the environment and inside the URIs), then every byte they produced is scanned for those keys.

Scanned: every file under the test's folders (source images, MLflow sqlite store), every object in every bucket
(shards, manifests, checkpoints, MLflow artifacts and models), the Ray session folder of this run (logs of the
driver, raylet, GCS, workers, runtime env agent), captured stdout/stderr, MLflow params/tags/metrics/experiments/
model versions read back through MlflowClient, and the text of the errors a failing ingest or training raises.
Zip archives (torch `.pt`, MLflow models), gzip files and Parquet tables are also scanned decompressed, and every
secret is looked for raw, URL-encoded and base64-encoded (at each of the three byte alignments).
"""

from __future__ import annotations

import base64
import gzip
import io
import os
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from pipelines import storage
from pipelines.config import load_config
from pipelines.ingest import IngestError, ingest
from pipelines.storage import StorageError
from pipelines.train import WorkerSecrets, build_trainer, run_training, worker_env
from tcm.data.synth import write_dataset

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny_cpu.yaml"

ENV_KEY, ENV_SECRET, ENV_TOKEN = "AKIAFAKETCMSECRET0001", "fakeSecretTcm/Do+Not+Leak0001", "FakeTcmSessionToken0001"
URI_KEY, URI_SECRET = "AKIAFAKETCMURIKEY0002", "fakeUriSecret/Do+Not+Leak0002"  # s3://KEY:SECRET@bucket/...
TRACKING_TOKEN = "FakeTcmTrackingToken0001"  # MLFLOW_TRACKING_TOKEN: travels to the training workers
SECRETS = {
    "AWS_ACCESS_KEY_ID": ENV_KEY,
    "AWS_SECRET_ACCESS_KEY": ENV_SECRET,
    "AWS_SESSION_TOKEN": ENV_TOKEN,
    "key in a URI": URI_KEY,
    "secret in a URI": URI_SECRET,
    "MLFLOW_TRACKING_TOKEN": TRACKING_TOKEN,
}
CREDS = f"{URI_KEY}:{quote(URI_SECRET, safe='')}"  # the userinfo part of a URI carrying keys


def _b64_cores(secret: bytes) -> set[bytes]:
    """Base64 of `secret` as it appears inside a longer encoded blob, at each of the 3 byte alignments: the
    groups that hold only secret bytes (the first and last group also depend on the neighbouring bytes)."""
    cores = set()
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * pad + secret)
            cores.add(encoded[4 if pad else 0 : -4])
    return cores


def _needles() -> dict[bytes, str]:
    needles: dict[bytes, str] = {}
    for name, secret in SECRETS.items():
        raw = secret.encode()
        for core in _b64_cores(raw):
            needles[core] = f"{name} (base64)"
        needles[quote_plus(secret).encode()] = f"{name} (form-encoded)"
        needles[quote(secret, safe="").encode()] = f"{name} (URL-encoded)"
        needles[raw] = name  # last: an encoding equal to the secret itself is reported as the secret
    return needles


NEEDLES = _needles()


def _expanded(label: str, data: bytes, depth: int = 0) -> Iterator[tuple[str, bytes]]:
    """The bytes, plus the decoded content of zip members, gzip and Parquet tables (recursively)."""
    yield label, data
    if depth > 3:
        return
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for info in zf.infolist():
                    yield from _expanded(f"{label}!{info.filename}", zf.read(info), depth + 1)
        except zipfile.BadZipFile:
            pass
    elif data[:2] == b"\x1f\x8b":
        try:
            yield from _expanded(f"{label}!gunzip", gzip.decompress(data), depth + 1)
        except (OSError, EOFError):
            pass
    elif data[:4] == b"PAR1":
        table = pq.read_table(io.BytesIO(data))
        meta = {k: v for k, v in (table.schema.metadata or {}).items()}
        yield f"{label}!rows", repr((meta, table.to_pylist())).encode()


def _leaks(label: str, data: bytes) -> list[str]:
    return [
        f"{name} in {where}"
        for where, content in _expanded(label, data)
        for needle, name in NEEDLES.items()
        if needle in content
    ]


def _scan_folder(root: Path) -> tuple[list[str], int]:
    leaks, files = [], 0
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:  # a socket or a file gone meanwhile
                continue
            files += 1
            leaks += _leaks(str(path), data)
    return leaks, files


def _scan_buckets(client) -> tuple[list[str], int]:
    leaks, objects = [], 0
    for bucket in client.list_buckets()["Buckets"]:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for obj in page.get("Contents", []):
                body = client.get_object(Bucket=bucket["Name"], Key=obj["Key"])["Body"].read()
                objects += 1
                leaks += _leaks(f"s3://{bucket['Name']}/{obj['Key']}", body)
    return leaks, objects


def _mlflow_records(tracking_uri: str) -> str:
    """Everything MLflow holds about the runs, as text: experiments, runs (params, tags, metrics, URIs),
    artifact listings, registered models and their versions."""
    client = MlflowClient(tracking_uri)
    out = []
    for exp in client.search_experiments():
        out.append(repr((exp.name, exp.artifact_location, exp.tags)))
        for run in client.search_runs([exp.experiment_id]):
            out.append(repr((run.info, run.data.params, run.data.tags, run.data.metrics)))
            stack = [None]
            while stack:
                for art in client.list_artifacts(run.info.run_id, stack.pop()):
                    out.append(art.path)
                    if art.is_dir:
                        stack.append(art.path)
    for model in client.search_registered_models():
        out.append(repr((model.name, model.tags, model.aliases)))
        for version in client.search_model_versions(f"name='{model.name}'"):
            out.append(repr((version.source, version.run_id, version.tags, version.run_link)))
    return "\n".join(out)


def _upload(client, folder: Path, bucket: str, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder)}", Body=path.read_bytes())


@pytest.fixture
def fake_keys(s3_server, monkeypatch):
    """The standard AWS variables with recognisable fake keys (moto accepts any), plus a tracking token."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ENV_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", ENV_TOKEN)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TRACKING_TOKEN)
    return s3_server


def test_records_keep_no_key_and_workers_get_keys_outside_the_runtime_env(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TRACKING_TOKEN)
    secrets = WorkerSecrets.from_env()
    assert ENV_SECRET not in repr(secrets) + str(secrets) + repr({"secrets": secrets})
    assert not set(worker_env().values()) & set(SECRETS.values())  # Ray logs the runtime env in full
    uri = f"s3://{CREDS}@bucket/runs"
    assert storage.strip_credentials(uri) == "s3://bucket/runs"
    assert storage.redact_uris({"a": [uri], "b": 1}) == {"a": ["s3://***@bucket/runs"], "b": 1}
    assert storage.resolve(storage.redact_uri(uri)).path == "bucket/runs"  # a recorded URI still resolves
    cfg = load_config(TINY, [f"train.storage_path={uri}", f"data.train=[{{uri: '{uri}'}}]"])
    assert not any(URI_KEY in v or URI_SECRET in v for v in cfg.flat_params().values())


@pytest.mark.slow
@pytest.mark.integration
def test_no_secret_is_written_anywhere(fake_keys, ray_local, tmp_path, capfd):
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
    client = fake_keys.client()
    suffix = os.urandom(3).hex()  # buckets are shared by the session's moto server
    raw, shards, runs = (fake_keys.create_bucket(f"{b}-{suffix}") for b in ("secret-raw", "secret-shards", "secret-runs"))
    for split, n in (("train", 6), ("val", 2)):
        write_dataset("icdar2015", tmp_path / "src", n=n, seed=3, split=split, height=128, width=128)
        _upload(client, tmp_path / "src" / split, raw, f"ic15/{split}")
    errors: list[str] = []

    # ingest with keys in both URIs (and the environment's keys present too)
    for split in ("train", "val"):
        ingest("icdar2015", f"s3://{CREDS}@{raw}/ic15/{split}", f"s3://{CREDS}@{shards}/ic15", split, progress=print)

    # failing ingests: missing source bucket, missing destination bucket, an object gone while workers read
    with pytest.raises(IngestError) as missing_src:
        ingest("icdar2015", f"s3://{CREDS}@no-such-bucket-{suffix}/x", str(tmp_path / "never"), "train", progress=print)
    with pytest.raises(IngestError) as missing_dst:
        ingest("icdar2015", f"s3://{CREDS}@{raw}/ic15/train", f"s3://{CREDS}@no-such-bucket-{suffix}/x", "train")

    def delete_one_image(message: str) -> None:  # called after listing, before the shards are read
        print(message)
        key = next(o["Key"] for o in client.list_objects_v2(Bucket=raw)["Contents"] if o["Key"].endswith(".jpg"))
        client.delete_object(Bucket=raw, Key=key)

    with pytest.raises(IngestError) as gone:
        ingest("icdar2015", f"s3://{CREDS}@{raw}/ic15/train", f"s3://{CREDS}@{shards}/gone", "train", progress=delete_one_image)
    assert "nothing was committed" in str(gone.value)
    for info in (missing_src, missing_dst, gone):
        errors += [str(info.value), repr(info.value), info.getrepr(style="long").__str__()]

    # a tiny training run reading those shards, checkpointing into a bucket given with keys in the URI
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    overrides = [
        "name=secrets",
        f"data.train=[{{uri: 's3://{CREDS}@{shards}/ic15'}}]",
        f"data.val=[{{uri: 's3://{CREDS}@{shards}/ic15', split: val}}]",
        f"train.storage_path=s3://{CREDS}@{runs}/runs",
        f"mlflow.tracking_uri={tracking_uri}",
        "mlflow.experiment=secrets",
        "data.batch_size=2",
        "train.epochs=1",
        "train.steps_per_epoch=2",
        "train.num_workers=1",
        "train.num_overlays=1",
    ]
    cfg = load_config(TINY, overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_training(cfg)
    assert outcome.checkpoint == f"s3://{runs}/runs/secrets/checkpoint_epoch=0001"
    assert outcome.model_version is not None
    errors.append(repr(outcome))
    with pytest.raises(StorageError) as unwritable:  # checkpoints into a missing bucket: fails before training
        build_trainer(load_config(TINY, [*overrides, f"train.storage_path=s3://{CREDS}@no-such-bucket-{suffix}/r"]))
    errors += [str(unwritable.value), repr(unwritable.value)]

    records = _mlflow_records(tracking_uri)
    assert "secrets" in records and "train/loss" in records  # the scan reads real records
    ray.shutdown()  # flush and close every log of this session before reading them
    out, err = capfd.readouterr()
    assert "rows" in out  # ingest progress was captured

    leaks = _leaks("captured stdout", out.encode()) + _leaks("captured stderr", err.encode())
    leaks += _leaks("error messages", "\n".join(errors).encode())
    leaks += _leaks("MLflow records", records.encode())
    folder_leaks, files = _scan_folder(tmp_path)
    ray_leaks, ray_files = _scan_folder(session_dir)
    bucket_leaks, objects = _scan_buckets(client)
    leaks += folder_leaks + ray_leaks + bucket_leaks
    assert files > 10 and ray_files > 10 and objects > 10  # there was something to scan
    assert any("checkpoint_epoch=0001/model.pt" in k["Key"] for k in client.list_objects_v2(Bucket=runs)["Contents"])
    assert not leaks, "secrets written:\n  " + "\n  ".join(sorted(set(leaks)))
