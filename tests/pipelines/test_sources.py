"""Official archives as input: read in place (local or S3), unsafe entries refused, limits enforced."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipelines.ingest import IngestError, ingest
from pipelines.sources import Limits, open_source
from tcm.data.synth import write_dataset

pytestmark = pytest.mark.usefixtures("ray_local")


def quiet(*_):
    return None


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    write_dataset("icdar2015", root, n=5, seed=3, split="train", height=128, width=160)
    return root / "train"


def _zip(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # a symlink entry
            zf.writestr(info, target)
    return path


def _tar(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return path


def _files(root: Path, sub: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / sub).iterdir())}


def test_archive_pair_gives_the_same_data_as_the_folder(raw, tmp_path):
    folder = ingest("icdar2015", str(raw), str(tmp_path / "a"), "train", progress=quiet)
    images = _zip(tmp_path / "ch4_training_images.zip", _files(raw, "images"))
    gts = _tar(tmp_path / "ch4_training_localization_transcription_gt.tar.gz", _files(raw, "annotations"))
    both = ingest("icdar2015", [str(images), str(gts)], str(tmp_path / "b"), "train", progress=quiet)
    assert both["sha256"] == folder["sha256"] and both["rows"] == 5 and both["quarantined"] == []
    single = _zip(tmp_path / "all.zip", {f"images/{k}": v for k, v in _files(raw, "images").items()}
                  | {f"gts/{k}": v for k, v in _files(raw, "annotations").items()})  # fmt: skip
    one = ingest("icdar2015", str(single), str(tmp_path / "c"), "train", progress=quiet)
    assert one["sha256"] == folder["sha256"]
    assert sorted(p.name for p in (tmp_path / "c").rglob("*") if p.is_file()) == ["manifest.json", "part-00000.parquet"]


@pytest.mark.parametrize("maker", [_zip, _tar], ids=["zip", "tar.gz"])
def test_unsafe_entries_are_refused_and_never_read(maker, raw, tmp_path):
    files = _files(raw, "images") | _files(raw, "annotations")
    files["../img_90.jpg"] = files["img_1.jpg"]  # escapes upwards
    files["/etc/gt_img_90.txt"] = files["gt_img_1.txt"]  # absolute
    archive = maker(tmp_path / f"evil{'.zip' if maker is _zip else '.tar.gz'}", files, links={"img_91.jpg": "/etc/passwd"})
    manifest = ingest("icdar2015", str(archive), str(tmp_path / "out"), "train", progress=quiet)
    reasons = {q["source"].split(":", 1)[1]: q["reason"] for q in manifest["quarantined"] if ":" in q["source"]}
    assert "escapes the archive" in reasons["../img_90.jpg"]
    assert "escapes the archive" in reasons["/etc/gt_img_90.txt"]
    assert "link" in reasons["img_91.jpg"]
    assert manifest["rows"] == 5  # every good pair still lands
    assert not (tmp_path / "img_90.jpg").exists()


@pytest.mark.parametrize("maker", [_zip, _tar], ids=["zip", "tar.gz"])
def test_limits_refuse_oversized_archives(maker, raw, tmp_path):
    archive = maker(tmp_path / f"big{'.zip' if maker is _zip else '.tar.gz'}", _files(raw, "images") | _files(raw, "annotations"))
    with pytest.raises(IngestError, match="entries exceed the limit of 4"):
        ingest("icdar2015", str(archive), str(tmp_path / "o1"), "train", progress=quiet, limits=Limits(max_entries=4))
    with pytest.raises(IngestError, match="unpacked bytes exceed the limit"):
        ingest("icdar2015", str(archive), str(tmp_path / "o2"), "train", progress=quiet,
               limits=Limits(max_unpacked_bytes=1000))  # fmt: skip


def test_zip_bomb_header_is_caught_by_the_declared_total(tmp_path):
    """A highly compressible entry: its declared unpacked size trips the limit before anything is read."""
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("img_1.jpg", b"\0" * 5_000_000)
    assert archive.stat().st_size < 20_000
    with pytest.raises(Exception, match="unpacked bytes exceed"):
        open_source([str(archive)], Limits(max_unpacked_bytes=1_000_000)).list()


def test_not_an_archive_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(IngestError, match="broken.zip: not a readable zip archive"):
        ingest("icdar2015", str(bad), str(tmp_path / "o"), "train", progress=quiet)


@pytest.mark.integration
def test_archives_from_a_bucket(raw, s3_env, tmp_path):
    images = _zip(tmp_path / "imgs.zip", _files(raw, "images"))
    gts = _zip(tmp_path / "gts.zip", _files(raw, "annotations"))
    s3_env.create_bucket("archives")
    client = s3_env.client()
    for path in (images, gts):
        client.put_object(Bucket="archives", Key=f"ic15/{path.name}", Body=path.read_bytes())
    local = ingest("icdar2015", str(raw), str(tmp_path / "local"), "train", progress=quiet)
    remote = ingest("icdar2015", ["s3://archives/ic15/imgs.zip", "s3://archives/ic15/gts.zip"], str(tmp_path / "r"),
                    "train", progress=quiet)  # fmt: skip
    assert remote["sha256"] == local["sha256"]
