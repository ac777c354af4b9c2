"""LMDB recognition datasets, the form every STR benchmark ships in (clip4str.md §7): keys `num-samples`
(decimal count), `image-%09d` (encoded image bytes) and `label-%09d` (UTF-8 text), 1-based.

Reading opens the environment read-only without a lock file (datasets are immutable; a read-only mount or a
temporary download works). A missing `num-samples` or sample key is a `LmdbFormatError` naming the key and the
database: the dataset is broken as a whole. Per-sample problems (an undecodable image or label) are the
caller's to quarantine.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import lmdb

MAP_SIZE = 1 << 40  # 1 TiB of address space, not disk: LMDB grows the file as it is written


class LmdbFormatError(ValueError):
    """The database lacks a key the format requires. The message names the key and the path."""


def image_key(index: int) -> bytes:
    return f"image-{index:09d}".encode()


def label_key(index: int) -> bytes:
    return f"label-{index:09d}".encode()


def open_readonly(path: str | Path) -> lmdb.Environment:
    path = Path(path)
    if not (path / "data.mdb").is_file():
        raise LmdbFormatError(f"{path}: no data.mdb (an LMDB dataset is a folder holding data.mdb)")
    return lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, subdir=True)


def num_samples(txn: lmdb.Transaction, path: str | Path) -> int:
    raw = txn.get(b"num-samples")
    if raw is None:
        raise LmdbFormatError(f"{path}: key 'num-samples' is missing")
    try:
        n = int(bytes(raw).decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise LmdbFormatError(f"{path}: key 'num-samples' holds {bytes(raw[:20])!r}, not a count") from None
    if n < 0:
        raise LmdbFormatError(f"{path}: key 'num-samples' is negative ({n})")
    return n


def read_samples(path: str | Path) -> Iterator[tuple[int, bytes, bytes]]:
    """(index, image bytes, label bytes) for index 1..num-samples; LmdbFormatError on a missing key."""
    env = open_readonly(path)
    try:
        with env.begin(buffers=False) as txn:
            n = num_samples(txn, path)
            for index in range(1, n + 1):
                image, label = txn.get(image_key(index)), txn.get(label_key(index))
                for key, value in ((image_key(index), image), (label_key(index), label)):
                    if value is None:
                        raise LmdbFormatError(f"{path}: key '{key.decode()}' is missing (num-samples is {n})")
                yield index, image, label
    finally:
        env.close()


def write_lmdb(path: str | Path, samples: Iterable[tuple[bytes, str]]) -> int:
    """Write (encoded image, label) samples as a fresh LMDB dataset in folder `path` (created; an existing
    data.mdb there is replaced). One transaction, keys written in index order: the same samples give the same
    data.mdb bytes. Returns the number of samples."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in ("data.mdb", "lock.mdb"):
        (path / name).unlink(missing_ok=True)
    env = lmdb.open(str(path), map_size=MAP_SIZE, subdir=True, lock=False, meminit=True)  # zeroed pages: byte-identical files
    n = 0
    try:
        with env.begin(write=True) as txn:
            for n, (image, label) in enumerate(samples, start=1):
                txn.put(image_key(n), image)
                txn.put(label_key(n), label.encode("utf-8"))
            txn.put(b"num-samples", str(n).encode())
    finally:
        env.close()
    return n


def check_keys(path: str | Path) -> int:
    """num-samples, after checking that every image / label key it promises exists (no value is copied)."""
    env = open_readonly(path)
    try:
        with env.begin(buffers=True) as txn:
            n = num_samples(txn, path)
            for index in range(1, n + 1):
                for key in (image_key(index), label_key(index)):
                    if txn.get(key) is None:
                        raise LmdbFormatError(f"{path}: key '{key.decode()}' is missing (num-samples is {n})")
    finally:
        env.close()
    return n
