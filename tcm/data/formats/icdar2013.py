"""ICDAR 2013 Focused Scene Text (RRC challenge 2): `<name>.jpg` + `gt_<name>.txt`.

Training files write `xmin ymin xmax ymax "text"` (spaces), test files `xmin, ymin, xmax, ymax, "text"` (comma
and space); both are read. A box becomes the 4-point polygon TL, TR, BR, BL. The text is unquoted when it is
quoted, with `\\"` and `\\\\` unescaped; IC13 has no don't-care instances. The writer writes the training form
and only what the format can hold exactly: axis-aligned rectangles given as TL, TR, BR, BL, and no ignore flag.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from tcm.data.formats import _common as c
from tcm.types import AnnotationError, Instance

_SEPARATOR = re.compile(r"\s*,\s*|\s+")  # test: ", "; train: " "
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)
_ANNOTATION = re.compile(r"gt_(.+)\.txt", re.DOTALL)


def _unquote(field: str) -> str:
    if len(field) >= 2 and field[0] == field[-1] == '"':
        return _ESCAPED.sub(r"\1", field[1:-1])
    return field


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def box_polygon(xmin: float, ymin: float, xmax: float, ymax: float) -> np.ndarray:
    """(4, 2) TL, TR, BR, BL."""
    return np.array([[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax]], dtype=np.float64)


class Icdar2013:
    name = "icdar2013"

    def image_key(self, path: str | os.PathLike[str]) -> str | None:
        parts = c.split_image_name(path)
        return parts[0] if parts else None

    def annotation_key(self, path: str | os.PathLike[str]) -> str | None:
        match = _ANNOTATION.fullmatch(c.basename(path))
        return match.group(1) if match else None

    def parse(self, data: bytes, source: str) -> list[Instance]:
        instances = []
        for line_no, line in c.lines(c.decode(data, source)):
            fields = _SEPARATOR.split(line.strip(), maxsplit=4)
            if len(fields) != 5:
                raise AnnotationError(
                    source, f'expected xmin ymin xmax ymax "text" (5 fields), found {len(fields)}', line_no
                )
            xmin, ymin, xmax, ymax = (c.number(f, source, line_no) for f in fields[:4])
            instances.append(Instance(box_polygon(xmin, ymin, xmax, ymax), _unquote(fields[4])))
        return instances

    def write(self, instances: Sequence[Instance]) -> bytes:
        rows = []
        for i, instance in enumerate(instances):
            where = f"{self.name} instance {i}"
            points = c.points_of(instance, where)
            if instance.ignore:
                raise ValueError(f"{where}: ICDAR2013 has no don't-care instances (ignore=True)")
            if points.shape != (4, 2) or not np.array_equal(points, box_polygon(*points[0], *points[2])):
                raise ValueError(
                    f"{where}: ICDAR2013 holds axis-aligned boxes given as TL, TR, BR, BL; got {points.tolist()} "
                    "(write its bounding box instead)"
                )
            text = _quote(c.single_line(instance.text, where))
            rows.append(f"{c.flat(points[[0, 2]], sep=' ')} {text}")  # xmin ymin xmax ymax "text"
        return c.encode_lines(rows)

    def annotation_name(self, image_name: str) -> str:
        parts = c.split_image_name(image_name)
        if parts is None:
            raise ValueError(f"{image_name!r} is not an image file name")
        return f"gt_{parts[0]}.txt"

    def image_name(self, key: str, ext: str) -> str:
        return f"{key}.{c.clean_ext(ext)}"
