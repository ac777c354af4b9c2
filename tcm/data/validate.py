"""Validation of one image and its annotations before they become a unified row.

Everything here raises `tcm.types.AnnotationError` (or `ImageError`) with a reason a person can act on; the
ingest stage turns those into quarantine entries. Geometry rules (documented, deterministic):
- a polygon needs >= 3 points, all finite;
- points outside the image are clipped to the image rectangle [0, W] x [0, H] and the instance is kept (the
  number of clipped points is counted in the manifest);
- after clipping a polygon must have a non-zero area (otherwise it lies outside the image or is degenerate);
- a self-intersecting polygon (shapely `is_valid` false, e.g. a bow-tie) is rejected: its region is ambiguous.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import shapely
from PIL import Image, UnidentifiedImageError

from tcm.types import AnnotationError, Instance


class ImageError(ValueError):
    """An image file cannot be decoded (empty, truncated, not an image)."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int


def inspect_image(data: bytes, source: str) -> ImageInfo:
    """Fully decode an image (catches truncation) and return its raw size, ignoring EXIF orientation."""
    if not data:
        raise ImageError(f"{source}: zero-byte file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decodes every pixel: a truncated file raises here
            width, height = img.size  # raw pixel size; annotations refer to raw pixels, not EXIF-rotated
    except UnidentifiedImageError:
        raise ImageError(f"{source}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{source}: corrupt or truncated image ({err})") from None
    if width < 1 or height < 1:
        raise ImageError(f"{source}: image has no pixels ({width}x{height})")
    return ImageInfo(width, height)


def validate_instances(
    instances: list[Instance], width: int, height: int, source: str
) -> tuple[list[Instance], int]:
    """Check and clip every polygon. Returns the clipped instances and the number of points clipped."""
    out: list[Instance] = []
    clipped = 0
    for n, inst in enumerate(instances, start=1):
        where = f"instance {n}"
        pts = np.asarray(inst.points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 3:
            count = pts.shape[0] if pts.ndim == 2 else pts.size
            raise AnnotationError(source, f"{where}: polygon has {count} points, needs at least 3")
        if not np.isfinite(pts).all():
            raise AnnotationError(source, f"{where}: non-finite coordinate (NaN or inf)")
        inside = np.clip(pts, [0.0, 0.0], [float(width), float(height)])
        moved = int(np.any(inside != pts, axis=1).sum())
        x, y = inside[:, 0], inside[:, 1]
        area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))  # shoelace
        if area <= 0.0:
            reason = "lies outside the image" if moved else "has zero area"
            raise AnnotationError(source, f"{where}: polygon {reason}")
        polygon = shapely.Polygon(inside)
        if not polygon.is_valid:
            if moved and shapely.Polygon(pts).is_valid:
                raise AnnotationError(
                    source, f"{where}: polygon collapses when clipped to the {width}x{height} image"
                )
            raise AnnotationError(
                source, f"{where}: self-intersecting polygon ({shapely.is_valid_reason(polygon)})"
            )
        clipped += moved
        out.append(Instance(points=inside, text=inst.text, ignore=inst.ignore))
    return out, clipped
