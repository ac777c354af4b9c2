"""What every dataset format shares: the DatasetFormat protocol, decoding, numbers, lines, names.

Readers raise only `AnnotationError(source, reason, line)`; writers raise `ValueError` for instances the format
cannot express exactly (the round trip write -> parse must give back the same points, text and ignore flag).
"""

from __future__ import annotations

import codecs
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath
from typing import Protocol

import numpy as np

from tcm.types import AnnotationError, Instance

# Image files any of the datasets ship (MLT17 has GIFs, TD500 upper-case JPG); compared lower-cased.
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "gif", "bmp"})

# A plain decimal number as annotation files write them: ASCII only, so "١٢" or "1_000" are not numbers here.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


class DatasetFormat(Protocol):
    """The contract of docs/CONTRACTS.md: pairing keys, reader, writer and file names of one dataset."""

    name: str

    def image_key(self, path: str | os.PathLike[str]) -> str | None: ...

    def annotation_key(self, path: str | os.PathLike[str]) -> str | None: ...

    def parse(self, data: bytes, source: str) -> list[Instance]: ...

    def write(self, instances: Sequence[Instance]) -> bytes: ...

    def annotation_name(self, image_name: str) -> str: ...

    def image_name(self, key: str, ext: str) -> str: ...


def basename(path: str | os.PathLike[str]) -> str:
    """The file name of a local path or an object-store URI (`s3://bucket/a/img_1.jpg` -> `img_1.jpg`)."""
    return PurePosixPath(os.fspath(path)).name


def split_image_name(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(stem, ext) of an image file name, None when the extension is not an image's."""
    stem, dot, ext = basename(path).rpartition(".")
    if not dot or not stem or ext.lower() not in IMAGE_EXTS:
        return None
    return stem, ext


def clean_ext(ext: str) -> str:
    """`jpg` or `.jpg` -> `jpg`."""
    return ext.removeprefix(".")


def decode(data: bytes, source: str) -> str:
    """UTF-8 text of an annotation file, with or without a BOM; names the line of an invalid byte."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise AnnotationError(source, f"invalid UTF-8 at byte {err.start}: {err.reason}", line) from None


def lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its `\\n` / `\\r\\n`) of every non-blank line.

    Only `\\n` ends a line: `str.splitlines` would also split on characters that may sit inside a transcription.
    """
    for line_no, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            yield line_no, line


def number(token: str, source: str, line_no: int, what: str = "coordinate") -> float:
    """A finite float from one field; AnnotationError for anything else (text, NaN, inf, overflow)."""
    token = token.strip()
    if not _NUMBER.fullmatch(token):
        raise AnnotationError(source, f"{what} {token[:40]!r} is not a number", line_no)
    value = float(token)
    if not math.isfinite(value):
        raise AnnotationError(source, f"{what} {token[:40]!r} is not finite", line_no)
    return value


def polygon(tokens: Sequence[str], source: str, line_no: int) -> np.ndarray:
    """(P, 2) float64 points from flat x0, y0, x1, y1, ... fields."""
    if len(tokens) % 2:
        raise AnnotationError(source, f"odd number of coordinates ({len(tokens)})", line_no)
    values = [number(t, source, line_no) for t in tokens]
    return np.asarray(values, dtype=np.float64).reshape(-1, 2)  # (2P,) -> (P, 2)


def points_of(instance: Instance, where: str) -> np.ndarray:
    """The instance's points as a finite (P, 2) float64 array, ValueError otherwise (writers)."""
    points = np.asarray(instance.points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{where}: points must have shape (P, 2), got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError(f"{where}: points must be finite, got {points.tolist()}")
    return points


def format_number(value: float) -> str:
    """Integral values as integers (as the datasets write them), others as the shortest exact float repr."""
    value = float(value)  # numpy scalars repr as `np.float64(...)`
    if not math.isfinite(value):
        raise ValueError(f"cannot write the non-finite coordinate {value}")
    if value.is_integer():
        return str(int(value))
    return repr(value)


def flat(points: np.ndarray, sep: str = ",") -> str:
    """x0,y0,x1,y1,... of (P, 2) points."""
    return sep.join(format_number(v) for v in points.reshape(-1))  # (P, 2) -> (2P,)


def line_text(instance: Instance, where: str, marker: str) -> str:
    """The transcription to write on one line: `marker` for don't-care instances, else the text itself.

    Raises ValueError for a text with a line break (no line format can hold it) or a text that would read back
    as the don't-care marker.
    """
    if instance.ignore:
        return marker
    text = single_line(instance.text, where)
    if text.strip() == marker:
        raise ValueError(f"{where}: text {text!r} is the don't-care marker but ignore is False")
    return text


def single_line(text: str, where: str) -> str:
    """`text` itself; ValueError when it holds a line break, which no line-based format can write."""
    if "\n" in text or "\r" in text:
        raise ValueError(f"{where}: a transcription cannot contain a line break: {text!r}")
    return text


def encode_lines(rows: Sequence[str]) -> bytes:
    """UTF-8 (no BOM: every reader here accepts both), one `\\n`-terminated line per row."""
    return "".join(row + "\n" for row in rows).encode("utf-8")


# --- the Robust Reading Competition layout shared by ICDAR2015 and MLT17 ---------------------------------------
# Images `img_<N>.<ext>`, annotations `gt_img_<N>.txt`, lines `x1,y1,...,x4,y4[,script],transcription`.

_RRC_IMAGE = re.compile(r"img_(\d+)", re.ASCII)
_RRC_ANNOTATION = re.compile(r"gt_img_(\d+)\.txt", re.ASCII)


def rrc_image_key(path: str | os.PathLike[str]) -> str | None:
    """`img_12.jpg` -> `12`."""
    parts = split_image_name(path)
    match = _RRC_IMAGE.fullmatch(parts[0]) if parts else None
    return match.group(1) if match else None


def rrc_annotation_key(path: str | os.PathLike[str]) -> str | None:
    """`gt_img_12.txt` -> `12`."""
    match = _RRC_ANNOTATION.fullmatch(basename(path))
    return match.group(1) if match else None


def rrc_annotation_name(image_name: str, dataset: str) -> str:
    key = rrc_image_key(image_name)
    if key is None:
        raise ValueError(f"{image_name!r} is not a {dataset} image name (img_<N>.<ext>)")
    return f"gt_img_{key}.txt"


def rrc_image_name(key: str, ext: str, dataset: str) -> str:
    if not key.isascii() or not key.isdigit():
        raise ValueError(f"{dataset} keys are the digits N of img_<N>, got {key!r}")
    return f"img_{key}.{clean_ext(ext)}"


def comma_fields(line: str, count: int, source: str, line_no: int, layout: str) -> list[str]:
    """Split a line at its first `count - 1` commas: the last field (the transcription) keeps its own commas."""
    fields = line.split(",", count - 1)
    if len(fields) != count:
        raise AnnotationError(
            source, f"expected {count} comma-separated fields ({layout}), found {len(fields)}", line_no
        )
    return fields
