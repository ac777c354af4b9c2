"""One lifetime for the local stack's state: the buckets are saved on `down` and put back on `up` (moto keeps
objects in memory only), and `down --wipe` forgets the buckets and the MLflow store together.

Two throwaway moto servers stand for the S3 process before and after a restart (the full-stack restart with
`tcm predict --model models:/tcm-detector@champion` is in the README walkthrough test).
"""

from __future__ import annotations

import pytest

from infra.local import stack
from tests.conftest import S3Server

pytestmark = pytest.mark.integration

OBJECTS = {("tcm-data", "shards/ic15/manifest.json"): b'{"rows": 8}', ("tcm-runs", "it/m-1/artifacts/MLmodel"): b"x" * 3000,
           ("mlflow-artifacts", "1/abc/artifacts/extra_files/model.pt"): bytes(range(256))}  # fmt: skip


def _contents(server: S3Server) -> dict[tuple[str, str], bytes]:
    s3 = server.client()
    out = {}
    for bucket in stack.BUCKETS:
        for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            out[(bucket, obj["Key"])] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def test_buckets_saved_on_the_way_down_come_back_on_the_way_up(tmp_path):
    snapshot = tmp_path / stack.SNAPSHOT
    before, after = S3Server(), S3Server()
    try:
        stack._create_buckets(before.endpoint)
        for (bucket, key), body in OBJECTS.items():
            before.client().put_object(Bucket=bucket, Key=key, Body=body)
        before.client().put_object(Bucket="tcm-data", Key="shards/", Body=b"")  # pyarrow's folder markers
        before.client().put_object(Bucket="tcm-data", Key="shards/ic15/", Body=b"")
        assert stack._save_buckets(before.endpoint, snapshot) == 3

        stack._create_buckets(after.endpoint)  # what `up` does: empty buckets, then the snapshot
        assert stack._restore_buckets(after.endpoint, snapshot) == 3
        assert _contents(after) == OBJECTS

        after.client().delete_object(Bucket="tcm-data", Key="shards/ic15/manifest.json")
        assert stack._save_buckets(after.endpoint, snapshot) == 2  # a save replaces the last one whole
        assert not (snapshot / "tcm-data" / "shards").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s3"]  # no .partial / .old left behind
    finally:
        before.stop()
        after.stop()


def test_a_failed_save_keeps_the_last_snapshot(tmp_path):
    snapshot = tmp_path / stack.SNAPSHOT
    (snapshot / "tcm-data").mkdir(parents=True)
    (snapshot / "tcm-data" / "kept").write_text("last save")
    from botocore.exceptions import EndpointConnectionError

    with pytest.raises(EndpointConnectionError):
        stack._save_buckets("http://127.0.0.1:9", snapshot)  # nothing listens there
    assert (snapshot / "tcm-data" / "kept").read_text() == "last save"


def test_wipe_forgets_the_buckets_and_the_mlflow_store_together(tmp_path, capsys):
    (tmp_path / "s3" / "tcm-data").mkdir(parents=True)
    (tmp_path / "s3" / "tcm-data" / "obj").write_text("x")
    (tmp_path / "mlflow.db").write_text("db")
    (tmp_path / "logs").mkdir()
    assert stack.main(["down", "--wipe", "--state-dir", str(tmp_path)]) == 0  # a stack that is down: data only
    assert not (tmp_path / "s3").exists() and not (tmp_path / "mlflow.db").exists()
    assert (tmp_path / "logs").is_dir()  # logs stay for a post-mortem
    assert "wiped the buckets and the MLflow store" in capsys.readouterr().out
