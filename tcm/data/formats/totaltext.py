"""Total-Text (txt ground truth): `img<N>.jpg` + `poly_gt_img<N>.txt`.

One record per instance, `x: [[115 503 494 115]], y: [[322 346 426 404]], ornt: [u'h'], transcriptions:
[u'nauGHTY']`: whitespace-separated numbers; a record may wrap over several lines (a new one starts with `x:`);
the transcription list may be empty (text "") and its string may hold commas, brackets and quotes. Strings are
read as Python 2/3 literals (`u'..'`, `'..'`, `".."`, with backslash escapes); an unquoted value is kept as is.
`#` as the transcription or orientation is don't care; the text stays `#`. The orientation (`c`, `h`, `m`,
`#`) is otherwise dropped; the writer writes `h` for quadrilaterals and `c` for other polygons.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from tcm.data.formats import _common as c
from tcm.types import AnnotationError, Instance

IGNORE = "#"  # Total-Text's don't-care transcription and orientation
_IMAGE = re.compile(r"img(\d+)", re.ASCII)
_ANNOTATION = re.compile(r"poly_gt_img(\d+)\.txt", re.ASCII)
_RECORD = re.compile(
    r"\s*x:\s*\[\[(?P<x>[^\[\]]*)\]\]\s*,\s*y:\s*\[\[(?P<y>[^\[\]]*)\]\]\s*,"
    r"(?:\s*ornt:\s*\[(?P<ornt>[^\[\]]*)\]\s*,)?"
    r"\s*transcriptions:\s*\[(?P<text>.*)\]\s*",
    re.DOTALL,
)
_NUMBER_SEP = re.compile(r"[\s,]+")
_QUOTED = re.compile(r"\s*[uU]?(['\"])(.*)\1\s*", re.DOTALL)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}


def _unescape(match: re.Match[str]) -> str:
    escape = match.group(1)
    if len(escape) > 1:  # \xNN, \uNNNN, \UNNNNNNNN
        code = int(escape[1:], 16)
        is_char = code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF  # no lone surrogates in a text
        return chr(code) if is_char else match.group(0)
    return _SIMPLE_ESCAPES.get(escape, match.group(0))  # unknown escapes stay, as in Python


def _string(value: str) -> str:
    """The string in `[u'...']`: a quoted literal unescaped, an empty list "", anything else stripped."""
    quoted = _QUOTED.fullmatch(value)
    if quoted is None:
        return value.strip()
    return _ESCAPE.sub(_unescape, quoted.group(2))


def _quote(text: str) -> str:
    return "u'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _numbers(field: str, source: str, line_no: int) -> list[float]:
    return [c.number(t, source, line_no) for t in _NUMBER_SEP.split(field) if t]


def _records(text: str, source: str) -> list[tuple[int, str]]:
    """(line of its `x:`, record text) of every record, wrapped lines joined."""
    records: list[tuple[int, list[str]]] = []
    for line_no, line in c.lines(text):
        if line.lstrip().startswith("x:"):
            records.append((line_no, [line]))
        elif records:
            records[-1][1].append(line)
        else:
            raise AnnotationError(source, "expected a record starting with 'x:'", line_no)
    return [(line_no, "\n".join(parts)) for line_no, parts in records]


class TotalText:
    name = "totaltext"

    def image_key(self, path: str | os.PathLike[str]) -> str | None:
        parts = c.split_image_name(path)
        match = _IMAGE.fullmatch(parts[0]) if parts else None
        return match.group(1) if match else None

    def annotation_key(self, path: str | os.PathLike[str]) -> str | None:
        match = _ANNOTATION.fullmatch(c.basename(path))
        return match.group(1) if match else None

    def parse(self, data: bytes, source: str) -> list[Instance]:
        instances = []
        for line_no, record in _records(c.decode(data, source), source):
            fields = _RECORD.fullmatch(record)
            if fields is None:
                raise AnnotationError(
                    source, "expected x: [[...]], y: [[...]], ornt: [...], transcriptions: [...]", line_no
                )
            xs, ys = _numbers(fields["x"], source, line_no), _numbers(fields["y"], source, line_no)
            if len(xs) != len(ys):
                raise AnnotationError(source, f"{len(xs)} x values but {len(ys)} y values", line_no)
            points = np.array([xs, ys], dtype=np.float64).reshape(2, -1).T  # (2, P) -> (P, 2)
            text = _string(fields["text"])
            ornt = _string(fields["ornt"] or "")
            instances.append(Instance(points, text, ignore=IGNORE in (text.strip(), ornt)))
        return instances

    def write(self, instances: Sequence[Instance]) -> bytes:
        rows = []
        for i, instance in enumerate(instances):
            where = f"{self.name} instance {i}"
            points = c.points_of(instance, where)
            text = c.line_text(instance, where, IGNORE)
            ornt = IGNORE if instance.ignore else "h" if len(points) == 4 else "c"
            xs, ys = c.flat(points[:, 0], sep=" "), c.flat(points[:, 1], sep=" ")
            rows.append(f"x: [[{xs}]], y: [[{ys}]], ornt: [{_quote(ornt)}], transcriptions: [{_quote(text)}]")
        return c.encode_lines(rows)

    def annotation_name(self, image_name: str) -> str:
        key = self.image_key(image_name)
        if key is None:
            raise ValueError(f"{image_name!r} is not a Total-Text image name (img<N>.jpg)")
        return f"poly_gt_img{key}.txt"

    def image_name(self, key: str, ext: str) -> str:
        if not key.isascii() or not key.isdigit():
            raise ValueError(f"totaltext keys are the digits N of img<N>, got {key!r}")
        return f"img{key}.{c.clean_ext(ext)}"
