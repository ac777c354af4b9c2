"""Ingest: pairing, validation/quarantine, idempotence, manifest, local and S3."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.ingest import ingest, plan_pairs, read_manifest, shard_uris

pytestmark = pytest.mark.usefixtures("ray_local")

def QUIET(*_):
    return None


def _jpeg(h: int = 64, w: int = 96, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def _write(root: Path, rel: str, data: bytes | str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


GOOD = "\ufeff10,10,50,10,50,30,10,30,Hello\n20,40,60,40,60,55,20,55,###\n"


def _bad_input_folder(root: Path) -> dict[str, str]:
    """One example of every bad input, plus good rows. Returns {source: expected reason fragment}."""
    for i in (1, 2, 3):
        _write(root, f"images/img_{i}.jpg", _jpeg(seed=i))
        _write(root, f"gts/gt_img_{i}.txt", GOOD)
    # points outside the image: clipped and kept
    _write(root, "images/img_4.jpg", _jpeg(seed=4))
    _write(root, "gts/gt_img_4.txt", "-5,10,50,10,50,30,-5,30,edge\n80,5,120,5,120,20,80,20,out\n")
    jpeg = _jpeg(seed=9)
    bad = {
        "images/img_10.jpg": (jpeg[: len(jpeg) // 2], GOOD, "truncated"),
        "images/img_11.jpg": (b"", GOOD, "zero-byte"),
        "images/img_12.jpg": (b"this is not an image at all", GOOD, "not an image"),
        "gts/gt_img_13.txt": (jpeg, "10,10,50,10,50,30,Hello\n", "fields"),
        "gts/gt_img_14.txt": (jpeg, "10,10,abc,10,50,30,10,30,Hello\n", "number"),
        "gts/gt_img_15.txt": (jpeg, "10,10,nan,10,50,30,10,30,Hello\n", "nan"),
        "gts/gt_img_16.txt": (jpeg, "10,10,10,10,10,10,10,10,point\n", "zero area"),
        "gts/gt_img_17.txt": (jpeg, "10,10,50,30,50,10,10,40,bowtie\n", "self-intersecting"),
        "gts/gt_img_18.txt": (jpeg, b"10,10,50,10,50,30,10,30,caf\xe9\n", "UTF-8"),
        "gts/gt_img_19.txt": (jpeg, "200,200,300,200,300,250,200,250,outside\n", "outside the image"),
    }
    expected = {}
    for rel, (img, gt, reason) in bad.items():
        n = rel.split("_")[-1].split(".")[0]
        _write(root, f"images/img_{n}.jpg", img)
        _write(root, f"gts/gt_img_{n}.txt", gt)
        expected[rel] = reason
    _write(root, "gts/gt_img_20.txt", GOOD)  # annotation without image
    expected["gts/gt_img_20.txt"] = "annotation without image"
    _write(root, "images/img_21.jpg", _jpeg(seed=21))  # image without annotation
    expected["images/img_21.jpg"] = "image without annotation"
    # Points with fewer than 3 coordinates pairs cannot be written in IC15 (always 4): the TT reader covers it.
    return expected


def test_pairs_by_dataset_naming_anywhere_under_src():
    plan = plan_pairs(["a/img_1.jpg", "b/c/gt_img_1.txt", "img_2.jpg", "readme.md"], "icdar2015")
    assert [(p.key, p.image, p.annotation) for p in plan.pairs] == [("1", "a/img_1.jpg", "b/c/gt_img_1.txt")]
    assert plan.quarantined == [{"source": "img_2.jpg", "reason": "image without annotation"}]


def test_bad_inputs_are_quarantined_with_reasons_and_good_rows_land(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    expected = _bad_input_folder(src)
    manifest = ingest("icdar2015", str(src), str(dst), "train", progress=QUIET)
    got = {q["source"]: q["reason"] for q in manifest["quarantined"]}
    assert set(got) == set(expected)
    for source, fragment in expected.items():
        assert fragment in got[source], (source, got[source])
    assert manifest["rows"] == 4 and manifest["splits"] == {"train": 4}
    assert manifest["clipped_points"] == 4  # two points of img_4's first box + two of its second
    table = pq.read_table(dst / manifest["files"]["train"][0])
    ids = table.column("id").to_pylist()
    assert ids == ["icdar2015/train/1", "icdar2015/train/2", "icdar2015/train/3", "icdar2015/train/4"]
    row4 = table.slice(3, 1).to_pylist()[0]
    assert row4["polygons"][0] == [0.0, 10.0, 50.0, 10.0, 50.0, 30.0, 0.0, 30.0]
    assert row4["polygons"][1] == [80.0, 5.0, 96.0, 5.0, 96.0, 20.0, 80.0, 20.0]


def test_cli_strict_exit_codes_and_missing_source(tmp_path):
    src = tmp_path / "src"
    _bad_input_folder(src)
    runner = CliRunner()
    ok = runner.invoke(app, ["ingest", "--format", "icdar2015", "--src", str(src), "--dst", str(tmp_path / "a"), "--split", "train"])
    assert ok.exit_code == 0, ok.output
    strict = runner.invoke(
        app, ["ingest", "--format", "icdar2015", "--src", str(src), "--dst", str(tmp_path / "b"), "--split", "train", "--strict"]
    )
    assert strict.exit_code == 1
    missing = runner.invoke(
        app, ["ingest", "--format", "icdar2015", "--src", str(tmp_path / "nope"), "--dst", str(tmp_path / "c"), "--split", "x"]
    )
    assert missing.exit_code == 1
    assert "nope" in missing.output and "not found" in missing.output
    assert "Traceback" not in missing.output


def test_rerun_is_identical_and_a_crash_leaves_nothing_counted(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _bad_input_folder(src)
    first = ingest("icdar2015", str(src), str(dst), "train", rows_per_shard=2, progress=QUIET)
    shard_bytes = {rel: (dst / rel).read_bytes() for rel in first["files"]["train"]}
    assert len(shard_bytes) == 3  # 14 pairs in 7 tasks of 2; only 3 tasks hold good rows
    # a crashed run: half-written temp file and a stray shard, no manifest update
    (dst / "train" / "part-00000.parquet.tmp-deadbeef").write_bytes(b"PAR1 half")
    shutil.copy(dst / "train" / "part-00000.parquet", dst / "train" / "part-00009.parquet")
    second = ingest("icdar2015", str(src), str(dst), "train", rows_per_shard=2, progress=QUIET)
    assert second["sha256"] == first["sha256"]
    assert second["files"] == first["files"]
    for rel, data in shard_bytes.items():
        assert (dst / rel).read_bytes() == data
    uris = shard_uris(str(dst), "train")
    assert sum(pq.read_table(u).num_rows for u in uris) == 4  # stray files are not listed, so not counted


def test_splits_merge_into_one_manifest(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in (1, 2):
        _write(src, f"img_{i}.jpg", _jpeg(seed=i))
        _write(src, f"gt_img_{i}.txt", GOOD)
    ingest("icdar2015", str(src), str(dst), "train", progress=QUIET)
    manifest = ingest("icdar2015", str(src), str(dst), "test", progress=QUIET)
    assert manifest["splits"] == {"test": 2, "train": 2}
    assert manifest["rows"] == 4
    assert read_manifest(str(dst)) == manifest


def test_ic15_fixture_rows_match_gt_files(ic15_fixture, tmp_path):
    manifest = ingest("icdar2015", str(ic15_fixture), str(tmp_path / "x"), "test", progress=QUIET)
    assert manifest["rows"] == 6 and manifest["quarantined"] == []
    table = pq.read_table(shard_uris(str(tmp_path / "x"), "test")[0])
    lines = {p.name: [ln for ln in p.read_text(encoding="utf-8-sig").splitlines() if ln.strip()] for p in (ic15_fixture / "gts").iterdir()}
    for row in table.to_pylist():
        gt = lines[f"gt_img_{row['id'].rsplit('/', 1)[1]}.txt"]
        assert len(row["polygons"]) == len(gt)
        assert sum(row["ignore"]) == sum(ln.rstrip().endswith(",###") for ln in gt)
        assert row["image"] == (ic15_fixture / "images" / f"img_{row['id'].rsplit('/', 1)[1]}.jpg").read_bytes()


@pytest.mark.integration
def test_s3_to_s3_gives_the_same_hash_as_local(s3_env, tmp_path):
    src = tmp_path / "src"
    _bad_input_folder(src)
    local = ingest("icdar2015", str(src), str(tmp_path / "dst"), "train", progress=QUIET)
    client = s3_env.client()
    s3_env.create_bucket("raw")
    s3_env.create_bucket("shards")
    for path in sorted(src.rglob("*")):
        if path.is_file():
            client.put_object(Bucket="raw", Key=f"ic15/{path.relative_to(src)}", Body=path.read_bytes())
    remote = ingest("icdar2015", "s3://raw/ic15", "s3://shards/ic15", "train", progress=QUIET)
    assert remote["sha256"] == local["sha256"]
    assert remote["rows"] == local["rows"] == 4
    assert {q["source"] for q in remote["quarantined"]} == {q["source"] for q in local["quarantined"]}
    body = client.get_object(Bucket="shards", Key="ic15/manifest.json")["Body"].read()
    assert json.loads(body)["sha256"] == local["sha256"]
    shard = client.get_object(Bucket="shards", Key=f"ic15/{remote['files']['train'][0]}")["Body"].read()
    assert pq.read_table(io.BytesIO(shard)).num_rows == 4


@pytest.mark.integration
def test_unreachable_s3_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    result = CliRunner().invoke(
        app, ["ingest", "--format", "icdar2015", "--src", "s3://raw/none", "--dst", str(tmp_path / "d"), "--split", "t"]
    )
    assert result.exit_code == 1
    assert "s3://raw/none" in result.output and "Traceback" not in result.output
