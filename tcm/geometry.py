"""Polygon helpers shared by every codec (numpy + pyclipper + opencv).

Conventions: a polygon is a (P, 2) float array of x, y in pixel coordinates (y down), pixel centres at integer
coordinates (what `cv2.fillPoly` / `cv2.findContours` use). "Clockwise" is as seen on the screen (y down), the
RRC convention: TL -> TR -> BR -> BL is clockwise and has a *positive* shoelace sum
`0.5 * sum(x_i y_{i+1} - x_{i+1} y_i)`.

Offsets (shrink/dilate) use pyclipper with round joins (DB, PAN, mmocr). Clipper works on integers: by default
coordinates are rounded to the pixel grid (`precision=1`); pass a larger `precision` (e.g. 8) for sub-pixel
results - coordinates, the offset and the arc tolerance are scaled by it and the result scaled back.
"""

from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np
import pyclipper

ARC_TOLERANCE = 0.25  # pyclipper's default, in pixels: max gap between a round join and the true arc


def as_polygon(points: np.ndarray) -> np.ndarray:
    """(P, 2) float64 copy of `points` (any array-like of x, y pairs)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)  # (P, 2)
    return pts


def _next(pts: np.ndarray) -> np.ndarray:
    """The following vertex of each vertex (P, 2): rows 1..P-1, then 0 (np.roll, without its overhead)."""
    return np.concatenate((pts[1:], pts[:1]))


def signed_area(points: np.ndarray) -> float:
    """Shoelace area; positive when the polygon is clockwise on the screen (y down)."""
    pts = as_polygon(points)
    nxt = _next(pts)
    return 0.5 * float(np.dot(pts[:, 0], nxt[:, 1]) - np.dot(nxt[:, 0], pts[:, 1]))


def polygon_area(points: np.ndarray) -> float:
    """Unsigned area of a simple polygon."""
    return abs(signed_area(points))


def polygon_perimeter(points: np.ndarray) -> float:
    """Length of the closed boundary."""
    pts = as_polygon(points)
    edges = _next(pts) - pts  # (P, 2)
    return float(np.sqrt((edges * edges).sum(axis=1)).sum())


def is_clockwise(points: np.ndarray) -> bool:
    """True when clockwise on the screen (the RRC's `validate_clockwise_points` accepts it)."""
    return signed_area(points) > 0


def to_clockwise(points: np.ndarray) -> np.ndarray:
    """The same polygon in clockwise (screen) order; a counter-clockwise one is reversed."""
    pts = as_polygon(points)
    return pts if signed_area(pts) >= 0 else pts[::-1].copy()


def shrink_distance(points: np.ndarray, ratio: float) -> float:
    """D = A (1 - r^2) / L: the offset that shrinks a polygon to the DB/PAN kernel of ratio r."""
    perimeter = polygon_perimeter(points)
    if perimeter <= 0:
        return 0.0
    return polygon_area(points) * (1.0 - ratio * ratio) / perimeter


def unclip_distance(points: np.ndarray, ratio: float) -> float:
    """D' = A' * ratio / L': DB's dilation of a detected kernel (unclip)."""
    perimeter = polygon_perimeter(points)
    if perimeter <= 0:
        return 0.0
    return polygon_area(points) * ratio / perimeter


def inverse_shrink_distance(area: float, perimeter: float, ratio: float, corners: float = 4.0) -> float:
    """The outward offset D that undoes a shrink of ratio r, from the kernel's area A' and perimeter L'.

    Dilating the kernel by D gives A = A' + L' D + c D^2 and L = L' + 2 c D (c = sum of tan(turn / 2) over the
    corners: 4 for a rectangle, ~4 for a text polygon whose 4 corners carry the turning); asking D = A (1 - r^2)
    / L gives c (1 + r^2) D^2 + r^2 L' D - (1 - r^2) A' = 0, whose positive root this returns. Exact for
    rectangles; a constant unclip ratio D' = A' ratio / L' inverts the shrink only for one aspect ratio
    (r = 0.4: 1.45 for a square, 2.25 at 4:1, 3.05 at 8:1, 5.25 in the limit).
    """
    if area <= 0 or perimeter <= 0:
        return 0.0
    a = corners * (1.0 + ratio * ratio)
    b = ratio * ratio * perimeter
    c = -(1.0 - ratio * ratio) * area
    return (-b + math.sqrt(b * b - 4.0 * a * c)) / (2.0 * a)


def offset_polygon(
    points: np.ndarray,
    distance: float,
    precision: float = 1.0,
    rounding: Literal["round", "trunc"] = "round",
) -> list[np.ndarray]:
    """Offset a closed polygon by `distance` pixels (> 0 dilates, < 0 shrinks) with round joins.

    Returns every piece pyclipper gives back (0 when the polygon vanishes, > 1 when a shrink splits it), each a
    (Q, 2) float64 array. Coordinates go to the 1/precision pixel grid first: rounded (default, unbiased), or
    truncated towards zero (`"trunc"`: what pyclipper does to float input, i.e. DB / PaddleOCR decoding).
    """
    pts = as_polygon(points) * precision
    offset = pyclipper.PyclipperOffset()
    offset.ArcTolerance = ARC_TOLERANCE * precision
    grid = np.round(pts) if rounding == "round" else np.trunc(pts)
    path = grid.astype(np.int64)  # (P, 2) clipper integer coordinates
    offset.AddPath(path.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    pieces = offset.Execute(distance * precision)
    return [np.asarray(p, dtype=np.float64).reshape(-1, 2) / precision for p in pieces]


def shrink_polygon(
    points: np.ndarray, ratio: float, max_distance: float | None = None, precision: float = 1.0
) -> np.ndarray | None:
    """The kernel of ratio r (D = A(1-r^2)/L, capped at `max_distance`); None when it vanishes or splits.

    A split (more than one piece) is treated as a failure, as mmocr does for ragged results: the caller marks
    the instance ignored rather than guessing which piece is the text.
    """
    distance = shrink_distance(points, ratio)
    if max_distance is not None:
        distance = min(distance, float(max_distance))
    pieces = offset_polygon(points, -distance, precision)
    if len(pieces) != 1 or len(pieces[0]) < 3:
        return None
    return pieces[0]


def min_area_rect(points: np.ndarray) -> tuple[tuple[float, float], tuple[float, float], float]:
    """cv2.minAreaRect of the points: ((cx, cy), (w, h), angle)."""
    return cv2.minAreaRect(as_polygon(points).astype(np.float32))


def rect_short_side(points: np.ndarray) -> float:
    """Short side of the minimum-area rectangle (mmocr's `_is_poly_invalid` / DB's size test)."""
    return float(min(min_area_rect(points)[1]))


def order_quad(box: np.ndarray) -> np.ndarray:
    """Order 4 corners as TL, TR, BR, BL (clockwise on the screen), DB's `get_mini_boxes` rule.

    The two left-most corners (by x, stable) give TL (smaller y; the later one on a tie) and BL; the two
    right-most give TR and BR the same way.
    """
    pts = np.asarray(box, dtype=np.float64)
    if pts.shape != (4, 2):
        raise ValueError(f"order_quad expects 4 corners, got shape {pts.shape}")
    i0, i1, i2, i3 = np.argsort(pts[:, 0], kind="stable").tolist()  # left to right
    tl, bl = (i0, i1) if pts[i1, 1] > pts[i0, 1] else (i1, i0)
    tr, br = (i2, i3) if pts[i3, 1] > pts[i2, 1] else (i3, i2)
    return pts[[tl, tr, br, bl]]  # (4, 2)


def rect_quad(rect: tuple[tuple[float, float], tuple[float, float], float]) -> np.ndarray:
    """The 4 corners of a cv2 rotated rectangle, ordered TL, TR, BR, BL (float64)."""
    return order_quad(cv2.boxPoints(rect))


def min_area_quad(points: np.ndarray) -> np.ndarray:
    """Minimum-area rectangle around the points as a clockwise quad starting top-left, (4, 2) float64."""
    return rect_quad(min_area_rect(points))
