"""The storage layer: paths and URIs, atomic writes, clear errors, no secret in a stored URI."""

from __future__ import annotations

import pytest

from pipelines import storage


def test_resolve_forms(tmp_path):
    assert storage.resolve(str(tmp_path)).path == str(tmp_path)
    assert storage.resolve(f"file://{tmp_path}").path == str(tmp_path)
    s3 = storage.resolve("s3://bucket/some/prefix/")
    assert (s3.path, s3.uri, s3.is_s3) == ("bucket/some/prefix", "s3://bucket/some/prefix", True)
    assert s3.join("a", "b.txt").path == "bucket/some/prefix/a/b.txt"
    with pytest.raises(storage.StorageError, match="unsupported scheme 'gs'"):
        storage.resolve("gs://bucket/x")


def test_keys_in_a_uri_are_used_but_never_kept():
    loc = storage.resolve("s3://AKIAFAKEKEY:fake%2Fsecret@bucket/data")
    assert "AKIAFAKEKEY" not in loc.uri and "secret" not in loc.uri
    assert loc.uri == "s3://***@bucket/data" and loc.path == "bucket/data"
    assert "secret" not in loc.join("x").uri


def test_write_is_atomic_and_errors_name_the_path(tmp_path):
    target = storage.resolve(str(tmp_path / "deep" / "f.bin"))
    storage.write_bytes(target, b"one")
    storage.write_bytes(target, b"two")
    assert storage.read_bytes(target) == b"two"
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["f.bin"]  # no temporary left behind
    with pytest.raises(storage.StorageError, match=r"nope.*not found"):
        storage.read_bytes(storage.resolve(str(tmp_path / "nope")))
    with pytest.raises(storage.StorageError, match="not found"):
        storage.list_files(storage.resolve(str(tmp_path / "missing")))
    assert storage.list_files(storage.resolve(str(tmp_path))) == ["deep/f.bin"]


def test_unwritable_destination_is_detected(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "file").write_text("x")
    with pytest.raises(storage.StorageError, match="cannot write"):
        storage.check_writable(storage.resolve(str(tmp_path / "ro" / "file")))  # a file where a folder must be
