"""LMDB and task 4.3 word folders: write -> read round trips and the LMDB key errors."""

from __future__ import annotations

import lmdb
import pytest

from tcm.data.formats import icdar2015_words, lmdb_words


def test_lmdb_round_trip_is_one_based_and_counts(tmp_path):
    samples = [(b"img-one", "one"), (b"img-two", 'tw"o\\')]
    assert lmdb_words.write_lmdb(tmp_path, samples) == 2
    assert lmdb_words.check_keys(tmp_path) == 2
    got = list(lmdb_words.read_samples(tmp_path))
    assert got == [(1, b"img-one", b"one"), (2, b"img-two", b'tw"o\\')]


def _raw_lmdb(path, entries: dict[bytes, bytes]) -> None:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for k, v in entries.items():
            txn.put(k, v)
    env.close()


@pytest.mark.parametrize(
    ("entries", "key"),
    [
        ({b"image-000000001": b"x", b"label-000000001": b"a"}, "'num-samples' is missing"),
        ({b"num-samples": b"two"}, "'num-samples' holds"),
        ({b"num-samples": b"2", b"image-000000001": b"x", b"label-000000001": b"a", b"image-000000002": b"y"},
         "'label-000000002' is missing"),  # fmt: skip
        ({b"num-samples": b"1", b"label-000000001": b"a"}, "'image-000000001' is missing"),
    ],
)
def test_lmdb_missing_keys_are_named(tmp_path, entries, key):
    _raw_lmdb(tmp_path, entries)
    with pytest.raises(lmdb_words.LmdbFormatError, match=key) as err:
        lmdb_words.check_keys(tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(lmdb_words.LmdbFormatError, match=key):
        list(lmdb_words.read_samples(tmp_path))


def test_lmdb_folder_without_data_is_named(tmp_path):
    with pytest.raises(lmdb_words.LmdbFormatError, match="no data.mdb"):
        lmdb_words.check_keys(tmp_path)


def test_words43_folder_round_trip_and_label_file_lookup(tmp_path):
    icdar2015_words.write_folder(tmp_path, [("word_1.png", b"a", "Hi, \"you\""), ("word_2.png", b"b", "x\\y")])
    data = (tmp_path / "gt.txt").read_bytes()
    assert data == b'word_1.png, "Hi, \\"you\\""\r\nword_2.png, "x\\\\y"\r\n'
    labels = icdar2015_words.read_labels(data, "gt.txt")
    assert [(lb.name, lb.text, lb.line) for lb in labels] == [("word_1.png", 'Hi, "you"', 1), ("word_2.png", "x\\y", 2)]
    files = ["sub/gt.txt", "sub/word_1.png", "sub/deeper/word_3.png", "other/word_9.png"]
    assert icdar2015_words.find_label_file(files) == "sub/gt.txt"
    assert icdar2015_words.image_files(files, "sub/gt.txt") == {"word_1.png": "sub/word_1.png", "deeper/word_3.png": "sub/deeper/word_3.png"}
    with pytest.raises(ValueError, match="exactly one"):
        icdar2015_words.find_label_file(["a/gt.txt", "b/gt.txt"])
