"""Storage faults: S3 throttling and dropped connections are retried; a server that goes away mid-ingest
fails the run cleanly, and the next run completes with the hash of a run that never failed."""

from __future__ import annotations

import threading
import time

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.ingest import IngestError, ingest, read_manifest, shard_uris
from tcm.data.synth import write_dataset
from tests.s3_faults import FaultyProxy

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.integration]


def quiet(*_):
    return None


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    write_dataset("icdar2015", root, n=12, seed=9, split="train", height=96, width=128)
    return root / "train"


def _upload(s3, raw, bucket: str) -> None:
    s3.create_bucket(bucket)
    client = s3.client()
    for path in sorted(raw.rglob("*")):
        if path.is_file():
            client.put_object(Bucket=bucket, Key=f"ic15/{path.relative_to(raw)}", Body=path.read_bytes())


def test_throttling_and_dropped_connections_are_retried(raw, s3_env, monkeypatch, tmp_path):
    reference = ingest("icdar2015", str(raw), str(tmp_path / "ref"), "train", progress=quiet)
    _upload(s3_env, raw, "faulty-src")
    s3_env.create_bucket("faulty-dst")
    proxy = FaultyProxy(s3_env.port, drop_first=2, slow_down_first=3)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        got = ingest("icdar2015", "s3://faulty-src/ic15", "s3://faulty-dst/shards", "train", rows_per_shard=4, progress=quiet)
    finally:
        proxy.stop()
    assert proxy.faults == 5  # every scheduled fault was hit, and each was absorbed by a retry
    assert got["sha256"] == reference["sha256"] and got["rows"] == 12


def test_server_gone_mid_ingest_fails_cleanly_and_rerun_completes(raw, s3_env, monkeypatch, tmp_path):
    reference = ingest("icdar2015", str(raw), str(tmp_path / "ref"), "train", progress=quiet)
    _upload(s3_env, raw, "gone-src")
    s3_env.create_bucket("gone-dst")
    client = s3_env.client()
    proxy = FaultyProxy(s3_env.port)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)

    def stop_after_first_shard():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if client.list_objects_v2(Bucket="gone-dst", Prefix="shards/train/").get("KeyCount", 0):
                proxy.stop()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=stop_after_first_shard)
    killer.start()
    result = CliRunner().invoke(
        app, ["ingest", "--format", "icdar2015", "--src", "s3://gone-src/ic15", "--dst", "s3://gone-dst/shards",
              "--split", "train", "--rows-per-shard", "1"],  # fmt: skip
    )
    killer.join()
    assert result.exit_code == 1, result.output
    error = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(error) == 1 and "nothing was committed" in error[0], result.output
    assert "Traceback" not in result.output
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.endpoint)  # the server is back
    with pytest.raises(IngestError, match="no manifest"):
        read_manifest("s3://gone-dst/shards")  # the failed run committed nothing
    again = ingest("icdar2015", "s3://gone-src/ic15", "s3://gone-dst/shards", "train", rows_per_shard=1, progress=quiet)
    assert again["sha256"] == reference["sha256"]
    ids = [i for u in shard_uris("s3://gone-dst/shards", "train") for i in _ids(u)]
    assert len(ids) == len(set(ids)) == 12  # no duplicate, no gap


def _ids(uri: str) -> list[str]:
    from pipelines import storage

    loc = storage.resolve(uri)
    return pq.read_table(loc.path, filesystem=loc.fs, columns=["id"]).column("id").to_pylist()
