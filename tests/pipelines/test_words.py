"""Word rows through the real pipeline (one Ray session for the module): crops of detection rows, LMDB and
task 4.3 ingest with every bad input, the CLI, and the augmented word stream."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipelines import words
from pipelines.cli import app
from pipelines.ingest import IngestError, ingest, shard_uris
from tcm.data.formats import lmdb_words
from tcm.data.synth import write_dataset
from tcm.data.synth_words import encode_png, render_word
from tcm.data.synth_words import write_dataset as write_words
from tcm.data.word_augment import WordAugmentConfig

pytestmark = pytest.mark.usefixtures("ray_local")


def QUIET(*_):
    return None


def rows_of(uri: str, split: str = "train") -> list[dict]:
    return [r for u in shard_uris(uri, split) for r in pq.read_table(u).to_pylist()]


def _png(seed: int) -> bytes:
    return encode_png(render_word(np.random.default_rng(seed))[0])


@pytest.fixture(scope="module")
def synth_detection(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("det")
    written = write_dataset("totaltext", root / "raw", n=3, seed=4, split="train", height=192, width=256)
    ingest("totaltext", str(root / "raw" / "train"), str(root / "rows"), "train", rows_per_shard=2, progress=QUIET)
    return root / "rows", written


def test_crops_of_synthetic_detection_rows(synth_detection, tmp_path):
    det, written = synth_detection
    manifest = words.build_crops(str(det), str(tmp_path / "words"), "train", progress=QUIET)
    instances = [inst for _, insts in written for inst in insts]
    wanted = sorted(inst.text for inst in instances if not inst.ignore)
    n_ignored = sum(inst.ignore for inst in instances)
    assert n_ignored > 0 and manifest["row_kind"] == "words"
    assert manifest["rows"] == len(wanted) and manifest["skipped"] == {"don't-care instance": n_ignored}
    assert manifest["files"]["train"] == ["train/part-00000.parquet", "train/part-00001.parquet"]  # one per shard
    rows = rows_of(str(tmp_path / "words"))
    assert sorted(r["label"] for r in rows) == wanted
    for r in rows:
        crop = cv2.imdecode(np.frombuffer(r["image"], np.uint8), cv2.IMREAD_COLOR)
        assert r["image"][:4] == b"\x89PNG" and crop.shape[:2] == (r["height"], r["width"])
        assert r["id"].startswith("totaltext/train/") and r["split"] == "train"
    # the streamed stage gives the same rows and the same counts
    streamed = words.crop_dataset(str(det), "train").take_all()
    outcomes = Counter((r["outcome"], r["reason"]) for r in streamed)
    assert outcomes == {("ok", ""): len(wanted), ("skipped", "don't-care instance"): n_ignored}
    assert sorted(r["sha256"] for r in streamed if r["outcome"] == "ok") == sorted(r["sha256"] for r in rows)
    again = words.build_crops(str(det), str(tmp_path / "words"), "train", progress=QUIET)
    assert again["sha256"] == manifest["sha256"]  # idempotent


def _jpeg(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def test_crop_bad_inputs_and_td500_are_counted_with_reasons(tmp_path):
    src = tmp_path / "ic15"
    (src / "images").mkdir(parents=True)
    (src / "gts").mkdir()
    (src / "images" / "img_1.jpg").write_bytes(_jpeg(1))
    (src / "gts" / "gt_img_1.txt").write_text(
        "10,10,50,10,50,30,10,30,Hello\n"
        "10,40,60,40,60,41,10,41,thin\n"  # 1 px tall: a valid polygon, a degenerate crop
        "60,10,90,10,90,30,60,30,###\n"
        "60,40,90,40,90,60,60,60,日本\n"  # nothing left in the charset
        "5,45,9,45,9,60,5,60,abcdefghijklmnopqrstuvwxyz0\n"  # 27 characters
    )
    ingest("icdar2015", str(src), str(tmp_path / "det"), "train", progress=QUIET)
    manifest = words.build_crops(str(tmp_path / "det"), str(tmp_path / "w"), "train", progress=QUIET)
    assert manifest["rows"] == 1 and [r["label"] for r in rows_of(str(tmp_path / "w"))] == ["Hello"]
    skipped = manifest["skipped"]
    assert skipped["don't-care instance"] == 1
    assert skipped["degenerate polygon: min-area rectangle thinner than 2 px"] == 1 and len(skipped) == 2
    assert manifest["filtered"] == {"empty after the charset adapter": 1, "longer than 25 characters after normalisation": 1}
    examples = manifest["split_details"]["train"]["examples"]
    assert examples["empty after the charset adapter"] == ["icdar2015/train/1/3"]
    # TD500: no transcriptions at all
    write_dataset("td500", tmp_path / "td", n=2, seed=1, split="train")
    td = ingest("td500", str(tmp_path / "td" / "train"), str(tmp_path / "tdrows"), "train", progress=QUIET)
    n_instances = sum(len(r["polygons"]) for r in rows_of(str(tmp_path / "tdrows")))
    tdw = words.build_crops(str(tmp_path / "tdrows"), str(tmp_path / "tdw"), "train", progress=QUIET)
    assert td["rows"] == 2 and tdw["rows"] == 0 and tdw["files"] == {"train": []}
    ignored = sum(sum(r["ignore"]) for r in rows_of(str(tmp_path / "tdrows")))
    assert tdw["skipped"].get("no transcription: TD500 stores none", 0) == n_instances - ignored > 0
    # a words destination never mixes with detection rows, and crops need detection rows
    with pytest.raises(IngestError, match="holds detection rows"):
        words.build_crops(str(tmp_path / "det"), str(tmp_path / "det"), "train", progress=QUIET)
    with pytest.raises(IngestError, match="not detection rows"):
        words.build_crops(str(tmp_path / "w"), str(tmp_path / "w2"), "train", progress=QUIET)


BAD_LMDB = [
    ("good", _png(1), "hello"),
    ("folded", _png(2), "héllo wörld"),  # NFKD + whitespace removed -> "helloworld"
    ("unreadable", b"not an image", "fine"),
    ("empty", _png(3), ""),
    ("long", _png(4), "x" * 26),
    ("outside", _png(5), "日本語"),
]


def test_lmdb_ingest_round_trip_with_bad_samples(tmp_path):
    lmdb_words.write_lmdb(tmp_path / "db", [(img, text) for _, img, text in BAD_LMDB] + [(_png(6), "ok")])
    manifest = words.ingest_lmdb(str(tmp_path / "db"), str(tmp_path / "dst"), "test", rows_per_shard=3, progress=QUIET)
    rows = rows_of(str(tmp_path / "dst"), "test")
    assert [(r["id"], r["label"]) for r in rows] == [
        ("lmdb/test/000000001", "hello"), ("lmdb/test/000000002", "helloworld"), ("lmdb/test/000000007", "ok")
    ]  # fmt: skip
    assert rows[0]["image"] == BAD_LMDB[0][1]  # the original bytes, never re-encoded
    assert manifest["files"]["test"] == ["test/part-00000.parquet", "test/part-00002.parquet"]  # shard 2 empty-free
    (q,) = manifest["quarantined"]
    assert q["source"].endswith("db:image-000000003") and "not an image" in q["reason"] and q["split"] == "test"
    assert manifest["filtered"] == {
        "empty after the charset adapter": 1, "empty label": 1, "longer than 25 characters after normalisation": 1
    }  # fmt: skip


@pytest.mark.parametrize(
    ("drop", "named"), [(b"num-samples", "'num-samples' is missing"), (b"label-000000002", "'label-000000002' is missing")]
)
def test_lmdb_missing_key_is_one_error_and_commits_nothing(tmp_path, drop, named):
    import lmdb

    lmdb_words.write_lmdb(tmp_path / "db", [(_png(1), "a"), (_png(2), "b")])
    env = lmdb.open(str(tmp_path / "db"), lock=False)
    with env.begin(write=True) as txn:
        txn.delete(drop)
    env.close()
    with pytest.raises(IngestError, match=named) as err:
        words.ingest_lmdb(str(tmp_path / "db"), str(tmp_path / "dst"), "train", progress=QUIET)
    assert str(tmp_path / "db") in str(err.value)
    assert not (tmp_path / "dst" / "manifest.json").exists()


def test_lmdb_from_s3_equals_local(tmp_path, s3_env):
    write_words("lmdb", tmp_path / "raw", n=6, seed=2)
    bucket = s3_env.create_bucket("words-lmdb")
    s3_env.client().upload_file(str(tmp_path / "raw" / "train" / "data.mdb"), bucket, "sets/syn/data.mdb")
    remote = words.ingest_lmdb(f"s3://{bucket}/sets/syn", f"s3://{bucket}/rows", "train", progress=QUIET)
    local = words.ingest_lmdb(str(tmp_path / "raw" / "train"), str(tmp_path / "rows"), "train", progress=QUIET)
    assert remote["rows"] == 6 and remote["sha256"] == local["sha256"]
    with pytest.raises(IngestError, match="no data.mdb"):
        words.ingest_lmdb(f"s3://{bucket}/sets/none", str(tmp_path / "x"), "train", progress=QUIET)


def test_words43_ingest_round_trip_with_bad_entries(tmp_path):
    written = write_words("icdar2015-words", tmp_path / "raw", n=5, seed=3)
    folder = tmp_path / "raw" / "train"
    (folder / "word_2.png").write_bytes(b"")  # zero-byte image
    (folder / "word_50.png").write_bytes(_png(9))  # no label line
    with (folder / "gt.txt").open("ab") as f:
        f.write(b'word_77.png, "ghost"\r\nword_6.png, ""\r\n')
    (folder / "word_6.png").write_bytes(_png(8))
    manifest = words.ingest_words43(str(folder), str(tmp_path / "dst"), "train", progress=QUIET)
    rows = rows_of(str(tmp_path / "dst"))
    expected = [(f"icdar2015-words/train/{name[:-4]}", text) for name, text in written if name != "word_2.png"]
    assert sorted((r["id"], r["label"]) for r in rows) == sorted(expected)
    reasons = {q["source"]: q["reason"] for q in manifest["quarantined"]}
    assert reasons["gt.txt:6"] == "word_77.png: no such image"
    assert reasons["word_50.png"] == "image without a line in gt.txt"
    assert "zero-byte" in reasons["word_2.png"] and len(reasons) == 3
    assert manifest["filtered"] == {"empty label": 1}
    (folder / "gt.txt").write_bytes(b'word_1.png, "unterminated\r\n')
    with pytest.raises(IngestError, match="gt.txt:1: text has no closing quote"):
        words.ingest_words43(str(folder), str(tmp_path / "dst2"), "train", progress=QUIET)


def test_cli_synth_recognition_then_ingest_prints_the_manifest_hash(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["synth", "--task", "recognition", "--format", "lmdb", "--out", str(tmp_path / "raw"),
                              "--n", "4", "--seed", "1"])  # fmt: skip
    assert out.exit_code == 0 and "wrote 4 word images" in out.output, out.output
    res = runner.invoke(app, ["ingest", "--format", "lmdb", "--src", str(tmp_path / "raw" / "train"),
                              "--dst", str(tmp_path / "rows"), "--split", "train", "--charset", "36"])  # fmt: skip
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "rows" / "manifest.json").read_text())
    assert f"manifest sha256 {manifest['sha256']}" in res.output
    assert all(r["label"] == r["label"].lower() and r["label"].isalnum() for r in rows_of(str(tmp_path / "rows")))
    # the detection ingest prints the hash it writes too (issue #17)
    write_dataset("icdar2015", tmp_path / "det", n=2, seed=0)
    det = runner.invoke(app, ["ingest", "--format", "icdar2015", "--src", str(tmp_path / "det" / "train"),
                              "--dst", str(tmp_path / "detrows"), "--split", "train"])  # fmt: skip
    written = json.loads((tmp_path / "detrows" / "manifest.json").read_text())["sha256"]
    assert det.exit_code == 0 and f"manifest sha256 {written}" in det.output
    bad = runner.invoke(app, ["synth", "--task", "recognition", "--format", "icdar2015", "--out", str(tmp_path), "--n", "1"])
    assert bad.exit_code == 1 and "icdar2015" in bad.output and "Traceback" not in bad.output


def test_word_train_stream_is_augmented_sized_and_reproducible(tmp_path):
    written = write_words("icdar2015-words", tmp_path / "raw", n=10, seed=5)
    words.ingest_words43(str(tmp_path / "raw" / "train"), str(tmp_path / "rows"), "train", progress=QUIET)
    cfg = WordAugmentConfig(image_size=(32, 128))

    def run(seed: int, augment: bool = True) -> dict[str, np.ndarray]:
        ds = words.word_train_dataset([(str(tmp_path / "rows"), 1.0)], "train", aug_cfg=cfg, seed=seed,
                                      augment=augment, batch_size=4)  # fmt: skip
        out = {}
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            assert batch["image"].shape[1:] == (3, 32, 128) and batch["image"].dtype == np.float32
            out.update(zip(batch["label"].tolist(), batch["image"], strict=True))
        return out

    a, b, plain = run(0), run(0), run(0, augment=False)  # seed dependence: tests/tcm/data/test_word_augment.py
    assert sorted(a) == sorted(text for _, text in written)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # same seed, same pixels
    assert sum(not np.array_equal(a[k], plain[k]) for k in a) >= 7  # P(no op) = 1/8 per word
