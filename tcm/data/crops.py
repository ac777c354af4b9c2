"""Rectified word crops from text polygons (spotting.md §6): the recogniser's view of a detection instance.

Conventions: polygon vertices are pixel *centres* (as every reader and `tcm.data.synth` use them), so a word
box of w x h pixels has corners (0, 0) .. (w-1, h-1) and the crop's border pixels sample the polygon's edges.

- 4 points: a perspective warp of the quad onto a rectangle of its min-area-rectangle size, the width taken
  along the quad's first edge. Corner order is normalised to clockwise (in image coordinates, y down) while
  keeping the given first point: every format we read stores the reading direction's top-left first.
- 2k >= 6 points (Total-Text / CTW1500 style: k points along the top side left to right, then k along the
  bottom side right to left): piecewise rectification between the two long sides. The strip between two
  consecutive top points and the matching bottom points is mapped bilinearly onto an output strip as wide as
  the mean of its two sides; neighbouring strips share their edge, so there are no seams. One `cv2.remap`.
- anything else (3 points, an odd count): the min-area rectangle of the points (spotting.md §6.1's fallback).
- a crop at least 1.5 times as tall as it is wide is turned 90 degrees counter-clockwise (vertical words).

Degenerate polygons raise `DegenerateError` with the reason (its varying part in parentheses at the end, so
callers can count by the part before it); callers skip and count them.
"""

from __future__ import annotations

import cv2
import numpy as np

TALL_RATIO = 1.5  # h >= 1.5 w: a vertical word, rotated to horizontal (PaddleOCR's get_rotate_crop_image)
MIN_SIDE = 2.0  # px: a thinner rectangle holds no legible glyph
MIN_AREA = 4.0  # px^2: below this the polygon is a line or a point


class DegenerateError(ValueError):
    """A polygon that cannot be rectified; str(err) is the reason (counted by callers)."""


def signed_area(points: np.ndarray) -> float:
    """Shoelace area of (P, 2) points; > 0 means clockwise on screen (image y points down)."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def clockwise(points: np.ndarray) -> np.ndarray:
    """The same ring, clockwise on screen, still starting at points[0]."""
    if signed_area(points) >= 0:
        return points
    return np.roll(points[::-1], 1, axis=0)  # reversed ring, rolled so that the old first point stays first


def check_polygon(points: np.ndarray) -> np.ndarray:
    """(P, 2) float64 points, or DegenerateError naming what is wrong."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 1 and pts.size % 2 == 0:
        pts = pts.reshape(-1, 2)  # x0, y0, x1, y1, ... -> (P, 2)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise DegenerateError(f"fewer than 3 points ({pts.size // 2 if pts.ndim else 0})")
    if not np.isfinite(pts).all():
        raise DegenerateError("non-finite coordinate")
    if abs(signed_area(pts)) < MIN_AREA:
        raise DegenerateError(f"area below {MIN_AREA:g} px^2 ({abs(signed_area(pts)):.2f})")
    (_, (rw, rh), _) = cv2.minAreaRect(pts.astype(np.float32))
    if min(rw, rh) < MIN_SIDE:
        raise DegenerateError(f"min-area rectangle thinner than {MIN_SIDE:g} px ({rw:.1f} x {rh:.1f})")
    return pts


def _upright(crop: np.ndarray) -> np.ndarray:
    h, w = crop.shape[:2]
    return np.ascontiguousarray(np.rot90(crop)) if h >= TALL_RATIO * w else crop  # 90 degrees CCW


def _quad_size(quad: np.ndarray) -> tuple[int, int]:
    """(w, h) of the quad's min-area rectangle, w along the quad's first edge (p0 -> p1)."""
    box = cv2.boxPoints(cv2.minAreaRect(quad.astype(np.float32))).astype(np.float64)  # (4, 2)
    a, b = box[1] - box[0], box[2] - box[1]  # two perpendicular sides of the rectangle
    first = quad[1] - quad[0]
    la, lb = float(np.hypot(*a)), float(np.hypot(*b))
    along_a = abs(float(a @ first)) / max(la, 1e-9) >= abs(float(b @ first)) / max(lb, 1e-9)
    w, h = (la, lb) if along_a else (lb, la)
    return max(2, int(round(w)) + 1), max(2, int(round(h)) + 1)  # + 1: vertices are pixel centres


def crop_quad(image: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Perspective warp of a (4, 2) quad onto its min-area-rectangle size (w along its first edge)."""
    quad = clockwise(check_polygon(quad))
    w, h = _quad_size(quad)
    dst = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    M = cv2.getPerspectiveTransform(quad.astype(np.float32), dst)
    crop = cv2.warpPerspective(image, M, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return _upright(crop)


def _polyline_at(chain: np.ndarray, knots: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Points (W, 2) on the polyline chain (k, 2) at output columns x (W,), vertex i sitting at knots[i]."""
    xs = np.interp(x, knots, chain[:, 0])
    ys = np.interp(x, knots, chain[:, 1])
    return np.stack([xs, ys], axis=1)


def crop_curved(image: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Piecewise-bilinear rectification between a top chain and a bottom chain (k, 2) each, left to right."""
    k = len(top)
    seg = 0.5 * (np.linalg.norm(np.diff(top, axis=0), axis=1) + np.linalg.norm(np.diff(bottom, axis=0), axis=1))
    knots = np.concatenate([[0.0], np.cumsum(seg)])  # (k,) output column of each vertex pair
    W = max(2, int(round(knots[-1])) + 1)  # + 1: vertices are pixel centres
    H = max(2, int(round(float(np.linalg.norm(top - bottom, axis=1).mean()))) + 1)
    if knots[-1] <= 0 or k < 2:
        raise DegenerateError("curved polygon has zero length")
    knots *= (W - 1) / knots[-1]
    cols = np.arange(W, dtype=np.float64)  # (W,)
    t_top = _polyline_at(top, knots, cols)  # (W, 2)
    t_bot = _polyline_at(bottom, knots, cols)  # (W, 2)
    v = (np.arange(H, dtype=np.float64) / (H - 1))[:, None, None]  # (H, 1, 1) from the top side to the bottom
    grid = (1 - v) * t_top[None] + v * t_bot[None]  # (H, W, 2) image point sampled by each output pixel
    map_x = grid[..., 0].astype(np.float32)
    map_y = grid[..., 1].astype(np.float32)
    crop = cv2.remap(image, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return _upright(crop)


def crop_min_area(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The min-area rectangle of any point set, corners ordered left-top first (spotting.md §6.1)."""
    box = cv2.boxPoints(cv2.minAreaRect(points.astype(np.float32))).astype(np.float64)  # (4, 2)
    by_x = box[np.argsort(box[:, 0], kind="stable")]
    left, right = by_x[:2], by_x[2:]
    tl, bl = left[np.argsort(left[:, 1], kind="stable")]
    tr, br = right[np.argsort(right[:, 1], kind="stable")]
    return crop_quad(image, np.array([tl, tr, br, bl]))


def crop_word(image: np.ndarray, points) -> np.ndarray:
    """The rectified crop of one text polygon (P, 2) or flat x0, y0, x1, y1, ... (see the module docstring).

    `image` is (H, W) or (H, W, C); the crop has the same channels. Raises DegenerateError."""
    pts = clockwise(check_polygon(points))
    P = len(pts)
    if P == 4:
        return crop_quad(image, pts)
    if P >= 6 and P % 2 == 0:
        k = P // 2
        top, bottom = pts[:k], pts[k:][::-1]  # (k, 2) each, both left to right
        return crop_curved(image, top, bottom)
    return crop_min_area(image, pts)
