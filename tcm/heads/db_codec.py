"""DBNet targets (encode) and polygons from the probability map (decode); numpy + opencv + pyclipper, CPU.

encode (../shared/reference/detectors.md §1.2, mmocr 1.x order):
1. a polygon flagged ignore, or invalid (< 3 points, non-finite, |area| < 1) or tiny (short side of its
   minimum-area rectangle < `min_text_size`), is ignored;
2. the others shrink by D = A (1 - r^2) / L (pyclipper, round joins); an empty or multi-piece result -> ignored;
3. gt_shrink = 1 inside the kernels; gt_shrink_mask = 1 except inside ignored polygons (the original shape);
4. threshold map, for the kept polygons only: every pixel inside the polygon dilated by D gets
   1 - clip(dist_to_polygon_boundary / D, 0, 1) (true point-to-segment distance, min over edges, vectorised
   over the pixels; DB's law-of-cosines variant takes the nearer endpoint whenever the angle at the pixel is
   acute, overestimating distances near segment ends: its T* is lower by up to ~0.02 there, equal elsewhere);
   the canvas keeps the max over polygons, then gt_thr = canvas * (thresh_max - thresh_min) + thresh_min;
   gt_thr_mask = 1 inside the dilated polygons.
Keys: gt_shrink, gt_shrink_mask, gt_thr, gt_thr_mask, aux_text (= gt_shrink), aux_mask (= gt_shrink_mask),
all float32 (H, W).

decode (§1.6) from `prob_logits` (1, H, W): P > bin_thresh is tested on the logits (logit(bin_thresh)), so the
full map is never passed through a sigmoid; contours (RETR_LIST, CHAIN_APPROX_SIMPLE), at most
`max_candidates`;
- quad: minAreaRect (skip short side < min_size), score = mean P inside the box (bbox-cropped fillPoly mask),
  keep score >= box_thresh, unclip by D' = A' * unclip_ratio / L', minAreaRect again (skip short side <
  min_size + 2); with `unclip="inverse"` the rectangle grows by the D that undoes the shrink instead;
- poly: approxPolyDP(poly_epsilon_ratio * arc length) with >= 4 points, score inside it, unclip by
  poly_unclip_ratio (or the inverse D), skip a multi-piece result and a short side < min_size + 2;
- `postprocess="tcm"` (the released TCM DBParam/DBVisPostprocessor): approxPolyDP(poly_epsilon_ratio * arc
  length; 0 = the contour itself) with >= 4 points, score inside it (>= box_thresh), unclip that polygon by
  D' = A' ratio / L' (unclip_ratio for quad, poly_unclip_ratio for poly; or the inverse D), skip a multi-piece
  result; quad = its minAreaRect if the short side > min_text_width, poly = the unclipped polygon;
then x * sx, y * sy, rounded and clipped to the scaled map. Points are clockwise (quads start top-left).
As DB / PaddleOCR, the unclip feeds pyclipper float corners truncated to integers (keeps boxes identical to
theirs).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pyclipper

from tcm.config import DBHeadConfig
from tcm.geometry import (
    as_polygon,
    inverse_shrink_distance,
    offset_polygon,
    polygon_area,
    polygon_perimeter,
    rect_quad,
    rect_short_side,
    shrink_distance,
    shrink_polygon,
    to_clockwise,
    unclip_distance,
)
from tcm.types import Detection

SUBPIXEL = 8.0  # "inverse" poly unclip on a 1/8 px grid: rounding to whole pixels would bias the inverse
LARGE_LOGIT = 20.0  # targets_as_outputs: sigmoid(20) = 1 - 2e-9, a "certain" network


def _fill(canvas: np.ndarray, polygons: list[np.ndarray], value: int) -> None:
    """cv2.fillPoly of float polygons rounded to the pixel grid."""
    cv2.fillPoly(canvas, [np.round(p).astype(np.int32).reshape(-1, 1, 2) for p in polygons], value)


def _valid_points(points: np.ndarray) -> bool:
    return points.ndim == 2 and points.shape[0] >= 3 and bool(np.isfinite(points).all())


def segment_distance2(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distance from the points (px, py) (float arrays of one shape) to the segment a-b."""
    ex, ey = float(b[0] - a[0]), float(b[1] - a[1])
    dx, dy = px - np.float32(a[0]), py - np.float32(a[1])
    length2 = ex * ex + ey * ey
    if length2 > 0:
        t = (dx * ex + dy * ey) * (1.0 / length2)  # projection parameter on the segment
        np.minimum(np.maximum(t, 0.0, out=t), 1.0, out=t)  # clamp to the segment
        dx -= t * ex
        dy -= t * ey
    return dx * dx + dy * dy


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class DBCodec:
    def __init__(self, cfg: DBHeadConfig):
        self.cfg = cfg

    # ------------------------------------------------------------------------------------------------ encode

    def _keep(self, points: np.ndarray) -> bool:
        """Valid and not tiny (mmocr `_is_poly_invalid`: |area| < 1 or min-area-rect short side < min_text_size)."""
        if not _valid_points(points) or polygon_area(points) < 1.0:
            return False
        return rect_short_side(points) >= self.cfg.min_text_size

    def _draw_border(self, points: np.ndarray, canvas: np.ndarray, thr_mask: np.ndarray) -> None:
        """Threshold canvas (max) and mask for one kept polygon."""
        H, W = canvas.shape
        distance = shrink_distance(points, self.cfg.shrink_ratio)
        dilated = offset_polygon(points, distance)
        if distance <= 0 or not dilated:
            return
        every = np.concatenate(dilated)  # (Q, 2) all dilated points
        x0, y0 = np.floor(every.min(axis=0)).astype(int)
        x1, y1 = np.ceil(every.max(axis=0)).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W - 1), min(y1, H - 1)
        if x0 > x1 or y0 > y1:
            return  # outside the image
        local = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)  # (h, w) the dilated polygon in its bbox
        rings = [np.round(p).astype(np.int32).reshape(-1, 1, 2) for p in dilated]
        cv2.fillPoly(local, rings, 1, offset=(-x0, -y0))
        thr_mask[y0 : y1 + 1, x0 : x1 + 1] |= local
        ys, xs = np.nonzero(local)  # (N,) the supervised pixels; outside them the value is 0 anyway
        px, py = (xs + x0).astype(np.float32), (ys + y0).astype(np.float32)
        nearest = np.full(px.shape, np.inf, np.float32)  # (N,) squared distance to the boundary
        for a, b in zip(points, np.concatenate([points[1:], points[:1]]), strict=True):
            np.minimum(nearest, segment_distance2(px, py, a, b), out=nearest)
        value = 1.0 - np.minimum(np.sqrt(nearest) * np.float32(1.0 / distance), 1.0)  # (N,)
        region = canvas[y0 : y1 + 1, x0 : x1 + 1]
        region[ys, xs] = np.maximum(region[ys, xs], value)

    def encode(
        self, polygons: list[np.ndarray], ignore: list[bool], height: int, width: int
    ) -> dict[str, np.ndarray]:
        cfg = self.cfg
        if len(polygons) != len(ignore):
            raise ValueError(f"DBCodec.encode: {len(polygons)} polygons but {len(ignore)} ignore flags")
        H, W = height, width
        shrink = np.zeros((H, W), np.uint8)
        shrink_mask = np.ones((H, W), np.uint8)
        canvas = np.zeros((H, W), np.float32)
        thr_mask = np.zeros((H, W), np.uint8)
        for poly, ignored in zip(polygons, ignore, strict=True):
            points = as_polygon(poly)
            kernel = None
            if not ignored and self._keep(points):
                kernel = shrink_polygon(points, cfg.shrink_ratio)  # None: vanished or split -> ignored
            if kernel is None:
                if _valid_points(points):
                    _fill(shrink_mask, [points], 0)
                continue
            _fill(shrink, [kernel], 1)
            self._draw_border(points, canvas, thr_mask)
        gt_thr = canvas * (cfg.thresh_max - cfg.thresh_min) + cfg.thresh_min
        gt_shrink = shrink.astype(np.float32)
        gt_shrink_mask = shrink_mask.astype(np.float32)
        return {
            "gt_shrink": gt_shrink,
            "gt_shrink_mask": gt_shrink_mask,
            "gt_thr": gt_thr.astype(np.float32),
            "gt_thr_mask": thr_mask.astype(np.float32),
            "aux_text": gt_shrink.copy(),
            "aux_mask": gt_shrink_mask.copy(),
        }

    # ------------------------------------------------------------------------------------------------ decode

    @staticmethod
    def _score(logits: np.ndarray, points: np.ndarray) -> float:
        """Mean P inside the polygon, over its bounding box crop (DB `box_score_fast`)."""
        H, W = logits.shape
        lo, hi = points.min(axis=0), points.max(axis=0)
        x0 = min(max(math.floor(lo[0]), 0), W - 1)
        x1 = min(max(math.ceil(hi[0]), 0), W - 1)
        y0 = min(max(math.floor(lo[1]), 0), H - 1)
        y1 = min(max(math.ceil(hi[1]), 0), H - 1)
        crop = logits[y0 : y1 + 1, x0 : x1 + 1]  # (h, w)
        mask = np.zeros(crop.shape, np.uint8)
        local = (points - np.array([x0, y0], dtype=points.dtype)).astype(np.int32)  # truncation, as DB
        cv2.fillPoly(mask, [local.reshape(-1, 1, 2)], 1)
        return cv2.mean(_sigmoid(crop), mask)[0]

    def _quad(self, logits: np.ndarray, contour: np.ndarray) -> tuple[np.ndarray, float] | None:
        cfg = self.cfg
        rect = cv2.minAreaRect(contour)
        (cx, cy), (w, h), angle = rect
        if min(w, h) < cfg.min_size:
            return None
        box = cv2.boxPoints(rect)  # (4, 2) float32
        score = self._score(logits, box)
        if score < cfg.box_thresh:
            return None
        if cfg.unclip == "inverse":  # the unclipped minAreaRect of a rectangle is the rectangle grown by D
            d = inverse_shrink_distance(w * h, 2.0 * (w + h), cfg.shrink_ratio)
            rect = ((cx, cy), (w + 2.0 * d, h + 2.0 * d), angle)
        else:
            # D' = A' ratio / L' of the box; pyclipper truncates the float corners to integers, as in DB
            offset = pyclipper.PyclipperOffset()
            offset.AddPath(box.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
            pieces = offset.Execute(w * h * cfg.unclip_ratio / (2.0 * (w + h)))
            if not pieces:
                return None
            rect = cv2.minAreaRect(np.array([p for piece in pieces for p in piece], np.int32))  # (Q, 2)
        if min(rect[1]) < cfg.min_size + 2:
            return None
        return rect_quad(rect), score

    def _poly(self, logits: np.ndarray, contour: np.ndarray) -> tuple[np.ndarray, float] | None:
        cfg = self.cfg
        epsilon = cfg.poly_epsilon_ratio * cv2.arcLength(contour, True)
        points = cv2.approxPolyDP(contour, epsilon, True).reshape(-1, 2)  # (P, 2) int32
        found = self._score_and_unclip(logits, points, cfg.poly_unclip_ratio)
        if found is None or rect_short_side(found[0]) < cfg.min_size + 2:
            return None
        return to_clockwise(found[0]), found[1]

    def _score_and_unclip(
        self, logits: np.ndarray, points: np.ndarray, ratio: float
    ) -> tuple[np.ndarray, float] | None:
        """A polygon of >= 4 points scored inside (>= box_thresh) and unclipped by D' = A' ratio / L' (or the
        inverse D) to exactly one piece: (grown (Q, 2), score), else None."""
        cfg = self.cfg
        if len(points) < 4:
            return None
        score = self._score(logits, points)
        if score < cfg.box_thresh:
            return None
        if cfg.unclip == "inverse":
            d = inverse_shrink_distance(polygon_area(points), polygon_perimeter(points), cfg.shrink_ratio)
            pieces = offset_polygon(points, d, precision=SUBPIXEL)
        else:
            pieces = offset_polygon(points, unclip_distance(points, ratio))
        return (pieces[0], score) if len(pieces) == 1 else None  # empty or split: skipped (released too)

    def _released(self, logits: np.ndarray, contour: np.ndarray) -> tuple[np.ndarray, float] | None:
        """The released TCM postprocessor (ocrclip/ocrclip/postprocessor.py) for one contour."""
        cfg = self.cfg
        points = contour
        if cfg.poly_epsilon_ratio > 0:  # released use_approxPolyDP (off for TD500)
            points = cv2.approxPolyDP(contour, cfg.poly_epsilon_ratio * cv2.arcLength(contour, True), True)
        ratio = cfg.unclip_ratio if cfg.mode == "quad" else cfg.poly_unclip_ratio
        found = self._score_and_unclip(logits, points.reshape(-1, 2), ratio)  # (P, 2) int32 points
        if found is None:
            return None
        grown, score = found  # (Q, 2)
        if cfg.mode == "poly":
            return (to_clockwise(grown), score) if len(grown) >= 4 else None
        rect = cv2.minAreaRect(grown.astype(np.float32))
        if min(rect[1]) <= cfg.min_text_width:  # released points2boundary keeps min side > min_width
            return None
        return rect_quad(rect), score

    def decode(
        self, outputs: dict[str, np.ndarray], scale: tuple[float, float] = (1.0, 1.0)
    ) -> list[Detection]:
        cfg = self.cfg
        logits = np.asarray(outputs["prob_logits"], dtype=np.float32)
        if logits.ndim == 3:
            logits = logits[0]  # (1, H, W) -> (H, W)
        if logits.ndim != 2:
            raise ValueError(f"DBCodec.decode: prob_logits must be (1, H, W) or (H, W), got {logits.shape}")
        H, W = logits.shape
        bitmap = (logits > _logit(cfg.bin_thresh)).view(np.uint8)  # (H, W) 0/1: P > bin_thresh
        contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        sx, sy = scale
        limit = np.array([W * sx, H * sy])
        factor = np.array([sx, sy])
        found = self._released if cfg.postprocess == "tcm" else self._quad if cfg.mode == "quad" else self._poly
        detections = []
        for contour in contours[: cfg.max_candidates]:
            result = found(logits, contour)
            if result is None:
                continue
            points, score = result
            points = np.clip(np.round(points * factor), 0, limit)  # (P, 2) original-image pixels
            detections.append(Detection(points.astype(np.float64), float(score)))
        return detections

    # ------------------------------------------------------------------------------------------------ check

    def targets_as_outputs(self, targets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A perfect network: P logits +-20 from gt_shrink, T = gt_thr; (1, H, W) float32 each."""
        shrink = np.asarray(targets["gt_shrink"])
        logits = np.where(shrink > 0.5, LARGE_LOGIT, -LARGE_LOGIT).astype(np.float32)
        return {"prob_logits": logits[None], "thresh": np.asarray(targets["gt_thr"], np.float32)[None]}
