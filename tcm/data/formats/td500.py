"""MSRA-TD500 (and HUST-TR400): `IMG_xxxx.JPG` + `IMG_xxxx.gt`, extensions matched case-insensitively.

Lines `index difficult x y w h theta` (spaces): (x, y) the top left and w, h the size of the *unrotated*
rectangle, theta in radians, rotation about the rectangle centre. The polygon is the corners (x, y), (x+w, y),
(x+w, y+h), (x, y+h) rotated by theta: `x' = cx + cos t (x - cx) - sin t (y - cy)`,
`y' = cy + sin t (x - cx) + cos t (y - cy)`. `difficult == 1` is don't care. There are no transcriptions
(text is always "").

The writer needs rotated rectangles whose corners come in that order (p0 -> p1 the rotated width edge,
p0 -> p3 the rotated height edge); it recovers the rectangle from the corners directly (centre = mean,
w = |p1 - p0|, h = |p3 - p0|, theta = the angle of p0 -> p1, or of p0 -> p3 less 90 degrees when that edge is
longer) and raises ValueError unless the rectangle gives the points back within 1e-6 px, so what it writes
reads back to the given polygon within 1e-6. Text is not written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from tcm.data.formats import _common as c
from tcm.types import AnnotationError, Instance

RECT_TOLERANCE = 1e-6  # px: the write -> read round trip guarantee; float error at image scale is ~1e-12


def rect_corners(x: float, y: float, w: float, h: float, theta: float) -> np.ndarray:
    """(4, 2) corners of the rectangle (x, y, w, h) rotated by theta (radians) about its centre."""
    cx, cy = x + w / 2, y + h / 2
    cos, sin = math.cos(theta), math.sin(theta)
    corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64)  # (4, 2)
    dx, dy = corners[:, 0] - cx, corners[:, 1] - cy  # (4,) each
    return np.stack([cx + cos * dx - sin * dy, cy + sin * dx + cos * dy], axis=1)  # (4, 2)


def rect_of(points: np.ndarray) -> tuple[float, float, float, float, float]:
    """(x, y, w, h, theta) of the rotated rectangle with corners `points` (4, 2), in TD500 corner order."""
    cx, cy = points.mean(axis=0)
    width_edge, height_edge = points[1] - points[0], points[3] - points[0]  # (2,) each
    w, h = float(np.hypot(*width_edge)), float(np.hypot(*height_edge))
    # The width edge is (w cos t, w sin t), the height edge (-h sin t, h cos t): read t off the longer one, so
    # that a zero-width rectangle keeps its angle.
    if w >= h:
        theta = math.atan2(width_edge[1], width_edge[0])
    else:
        theta = math.atan2(-height_edge[0], height_edge[1])
    return float(cx) - w / 2, float(cy) - h / 2, w, h, theta


class Td500:
    name = "td500"

    def image_key(self, path: str | os.PathLike[str]) -> str | None:
        parts = c.split_image_name(path)
        return parts[0] if parts else None

    def annotation_key(self, path: str | os.PathLike[str]) -> str | None:
        stem, dot, ext = c.basename(path).rpartition(".")
        return stem if dot and stem and ext.lower() == "gt" else None

    def parse(self, data: bytes, source: str) -> list[Instance]:
        instances = []
        for line_no, line in c.lines(c.decode(data, source)):
            fields = line.split()
            if len(fields) != 7:
                raise AnnotationError(
                    source, f"expected index difficult x y w h theta (7 fields), found {len(fields)}", line_no
                )
            c.number(fields[0], source, line_no, "index")
            if fields[1] not in ("0", "1"):
                raise AnnotationError(
                    source, f"difficult flag must be 0 or 1, got {fields[1][:40]!r}", line_no
                )
            x, y, w, h, theta = (c.number(f, source, line_no) for f in fields[2:])
            with np.errstate(over="ignore", invalid="ignore"):  # checked just below
                points = rect_corners(x, y, w, h, theta)  # (4, 2)
            if not np.isfinite(points).all():
                raise AnnotationError(source, "the rectangle's corners overflow a float", line_no)
            instances.append(Instance(points, "", ignore=fields[1] == "1"))
        return instances

    def write(self, instances: Sequence[Instance]) -> bytes:
        rows = []
        for i, instance in enumerate(instances):
            where = f"{self.name} instance {i}"
            points = c.points_of(instance, where)
            if points.shape != (4, 2):
                raise ValueError(
                    f"{where}: TD500 writes rotated rectangles (4 points), got {len(points)} points"
                )
            rect = rect_of(points)
            error = float(np.abs(rect_corners(*rect) - points).max())
            if error > RECT_TOLERANCE:
                raise ValueError(
                    f"{where}: {points.tolist()} is not a rotated rectangle in TD500 corner order "
                    f"(x,y)->(x+w,y)->(x+w,y+h)->(x,y+h) (off by {error:.3g} px)"
                )
            numbers = " ".join(c.format_number(v) for v in rect)
            rows.append(f"{i} {int(instance.ignore)} {numbers}")
        return c.encode_lines(rows)

    def annotation_name(self, image_name: str) -> str:
        parts = c.split_image_name(image_name)
        if parts is None:
            raise ValueError(f"{image_name!r} is not an image file name")
        return f"{parts[0]}.gt"

    def image_name(self, key: str, ext: str) -> str:
        return f"{key}.{c.clean_ext(ext)}"
