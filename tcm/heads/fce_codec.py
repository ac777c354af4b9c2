"""FCENet target codec (numpy, CPU data workers): Fourier contour embedding targets and their decoding.

Facts: ../shared/reference/detectors.md §3.2 (targets) and §3.4 (decoding). Per level (strides 8/16/32) a
(4k+5, H/s, W/s) float32 map [TR, TCL, mask, real(2k+1), imag(2k+1)]; Fourier vectors are stored in the
order c_-k..c_k (index k is c_0), with c_0 replaced by the offset of the contour centroid from the pixel.
Pixel (x, y) of a level stands for the input point (s*x, s*y) (mmocr's convention; encode and decode agree).
"""

from __future__ import annotations

import cv2
import numpy as np
import shapely

from tcm.config import FCEHeadConfig
from tcm.geometry import min_area_quad, to_clockwise
from tcm.types import Detection

FOURIER_POINTS = 400  # boundary points the Fourier transform is taken over (FCENet / mmocr)
START_CANDIDATES = 8  # start = the top-most of the 8 points nearest the vertical centre line (mmocr)
AUX_STRIDE = 32  # the matching target's grid = the score map's (released pix_text_match_gt_size_divisors=32)
AUX_PROPORTION = (0.0, 1.0)  # the released fourth "level" takes every polygon with proportion in (0, 1)
PERFECT_LOGIT = 20.0  # |logit| of a "perfect" 2-way softmax: p = 1 - 4e-18, far beyond any threshold


# ----------------------------------------------------------------------------------------------- Fourier


def fourier_basis(degree: int, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables (2k+1, N) of the inverse transform: angle 2*pi*j*n/N for j = -k..k, n = 0..N-1.

    x_n = sum_j Re(c_j) cos - Im(c_j) sin ;  y_n = sum_j Re(c_j) sin + Im(c_j) cos  (Re/Im of sum c_j e^{i..})
    """
    j = np.arange(-degree, degree + 1, dtype=np.float64)[:, None]  # (2k+1, 1)
    n = np.arange(num_points, dtype=np.float64)[None, :]  # (1, N)
    angle = 2.0 * np.pi * j * n / num_points  # (2k+1, N)
    return np.cos(angle), np.sin(angle)


def fourier_to_polygons(real: np.ndarray, imag: np.ndarray, num_points: int) -> np.ndarray:
    """(M, 2k+1) real and imaginary coefficients c_-k..c_k -> (M, N, 2) contour points."""
    M, J = real.shape
    cos, sin = fourier_basis((J - 1) // 2, num_points)  # (2k+1, N) each
    xs = real @ cos - imag @ sin  # (M, N)
    ys = real @ sin + imag @ cos  # (M, N)
    return np.stack([xs, ys], axis=-1)  # (M, N, 2)


def resample_contour(polygon: np.ndarray, num_points: int) -> np.ndarray:
    """(P, 2) closed polygon -> (num_points, 2) points equally spaced along its perimeter, from vertex 0."""
    closed = np.concatenate([polygon, polygon[:1]], axis=0)  # (P+1, 2)
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)  # (P,)
    arc = np.concatenate([[0.0], np.cumsum(seg)])  # (P+1,) arc length at each vertex
    t = np.arange(num_points) * (arc[-1] / num_points)  # (num_points,) sampled arc positions
    return np.stack([np.interp(t, arc, closed[:, 0]), np.interp(t, arc, closed[:, 1])], axis=1)


def fourier_signature(polygon: np.ndarray, degree: int) -> np.ndarray:
    """(P, 2) polygon -> complex (2k+1,) coefficients c_-k..c_k; starts near the top middle, clockwise."""
    points = resample_contour(polygon.astype(np.float64), FOURIER_POINTS)  # (400, 2)
    centred = points - points.mean(axis=0)
    nearest_mid = np.argsort(np.abs(centred[:, 0]), kind="stable")[:START_CANDIDATES]
    start = nearest_mid[np.argmin(centred[nearest_mid, 1])]
    points = np.roll(points, -start, axis=0)  # (400, 2) starting near the top middle
    spectrum = np.fft.fft(points[:, 0] + 1j * points[:, 1]) / FOURIER_POINTS  # (400,) c_0..c_399
    coeffs = np.concatenate([spectrum[-degree:], spectrum[: degree + 1]])  # (2k+1,) c_-k..c_k
    # Orientation: the dominant first harmonic must be c_1 (increasing angle = clockwise on screen, y down).
    # Reversing c_-k..c_k reverses the traversal from the same start point. Ties are decided by c_2 vs c_-2.
    k = degree
    pos, neg = np.abs(coeffs[k + 1]), np.abs(coeffs[k - 1])
    if pos < neg or (pos == neg and np.abs(coeffs[k + 2]) < np.abs(coeffs[k - 2])):
        coeffs = coeffs[::-1].copy()
    return coeffs


# ----------------------------------------------------------------------------------------- centre region


def _turn_angles(points: np.ndarray) -> np.ndarray:
    """(P, 2) closed polygon -> (P,) sum of the turning angles (radians) at both ends of edge i -> i+1."""
    edges = np.roll(points, -1, axis=0) - points  # (P, 2) edge i goes from point i to point i+1
    unit = edges / np.maximum(np.linalg.norm(edges, axis=1, keepdims=True), 1e-12)
    turn_in = np.arccos(np.clip((np.roll(unit, 1, axis=0) * unit).sum(1), -1.0, 1.0))  # edge i-1 -> i
    turn_out = np.arccos(np.clip((unit * np.roll(unit, -1, axis=0)).sum(1), -1.0, 1.0))  # edge i -> i+1
    return turn_in + turn_out


def head_tail_edges(points: np.ndarray, orientation_thr: float) -> tuple[int, int]:
    """Indices (h, t) of the head and tail edges (edge i joins point i to point i+1) of a text polygon.

    Quads: the pair of opposite edges that is more vertical, unless the vertical pair is `orientation_thr`
    times longer than the horizontal one (vertical text). More points (TextSnake style): the two non-adjacent
    edges where the contour turns back (largest turning-angle sums), with a bonus for splitting the boundary
    into two sidelines of similar length and for the ends of the 2k-point (CTW1500) layout.
    """
    P = len(points)
    edges = np.roll(points, -1, axis=0) - points  # (P, 2)
    lengths = np.linalg.norm(edges, axis=1)  # (P,)
    if P == 4:
        slope = np.abs(edges[:, 1]) / (np.abs(edges[:, 0]) + 1e-12)  # (4,) |dy/dx| per edge
        pair_a, pair_b = (0, 2), (1, 3)
        if slope[0] + slope[2] < slope[1] + slope[3]:
            horizontal, vertical = pair_a, pair_b
        else:
            horizontal, vertical = pair_b, pair_a
        vertical_len = lengths[vertical[0]] + lengths[vertical[1]]
        horizontal_len = lengths[horizontal[0]] + lengths[horizontal[1]]
        return horizontal if vertical_len > horizontal_len * orientation_thr else vertical
    score = _turn_angles(points) / np.pi  # (P,) ~1 at an end edge, ~0 along a smooth sideline
    if P % 2 == 0:
        score[[P // 2 - 1, P - 1]] += 0.1  # CTW1500-style layout: points 0..k-1 top, k..2k-1 bottom
    arc = np.concatenate([[0.0], np.cumsum(lengths)])  # (P+1,) arc length at each vertex
    h, t = np.triu_indices(P, k=2)  # (Q,) every pair of edges h < t that are not neighbours ...
    apart = ~((h == 0) & (t == P - 1))  # ... nor neighbours through the wrap-around
    h, t = h[apart], t[apart]
    side_1 = arc[t] - arc[h + 1]  # (Q,) boundary length of points h+1 .. t
    side_2 = arc[-1] - (arc[t + 1] - arc[h])  # (Q,) points t+1 .. h (wrapping)
    balance = 1.0 - np.abs(side_1 - side_2) / np.maximum(side_1 + side_2, 1e-12)  # 1 = equal sidelines
    best = int(np.argmax(score[h] + score[t] + 0.3 * balance))
    return int(h[best]), int(t[best])


def _resample_line(line: np.ndarray, num_segments: int) -> np.ndarray:
    """(Q, 2) open polyline -> (num_segments + 1, 2) points equally spaced along it, ends included."""
    seg = np.linalg.norm(np.diff(line, axis=0), axis=1)  # (Q-1,)
    arc = np.concatenate([[0.0], np.cumsum(seg)])  # (Q,)
    t = np.linspace(0.0, arc[-1], num_segments + 1)
    return np.stack([np.interp(t, arc, line[:, 0]), np.interp(t, arc, line[:, 1])], axis=1)


def center_region_polygon(
    points: np.ndarray, step: float, shrink_ratio: float, orientation_thr: float
) -> np.ndarray | None:
    """The text centre line region of a (P, 2) polygon as one polygon (Q, 2), or None when it has no length.

    Head/tail edges split the boundary into two sidelines; both are resampled to the same count with
    `step`, the centre line is their mean, `|top_0 - bottom_0| / 4 // step` points are dropped at the head
    (the same at the tail) when enough remain, and the sidelines are pulled to `shrink_ratio` of their
    distance from it.
    """
    distinct = np.linalg.norm(points - np.roll(points, 1, axis=0), axis=1) > 1e-6  # (P,) not a repeat
    points = points[distinct]
    if len(points) == 3:  # a triangle has no head/tail pair: its min-area rectangle's region, clipped to it
        band = center_region_polygon(min_area_quad(points), step, shrink_ratio, orientation_thr)
        if band is None:
            return None
        clipped = shapely.Polygon(band).intersection(shapely.Polygon(points))
        parts = [clipped] if isinstance(clipped, shapely.Polygon) else list(getattr(clipped, "geoms", []))
        parts = [g for g in parts if isinstance(g, shapely.Polygon) and g.area > 0]
        if not parts:
            return None
        return np.asarray(max(parts, key=lambda g: g.area).exterior.coords)[:-1]  # (Q, 2) open ring
    if len(points) < 3:
        return None
    P = len(points)
    h, t = head_tail_edges(points, orientation_thr)
    top = points[[(i % P) for i in range(h + 1, t + 1)]]  # head -> tail
    bottom = points[[(i % P) for i in range(t + 1, h + P + 1)]][::-1]  # reversed: head -> tail as well
    mean_len = 0.5 * (
        np.linalg.norm(np.diff(top, axis=0), axis=1).sum()
        + np.linalg.norm(np.diff(bottom, axis=0), axis=1).sum()
    )
    n = max(int(mean_len / step), 1)  # segments per sideline
    top, bottom = _resample_line(top, n), _resample_line(bottom, n)  # (n+1, 2) each
    center = 0.5 * (top + bottom)  # (n+1, 2)
    head_drop = int(np.linalg.norm(top[0] - bottom[0]) / 4 // step)
    tail_drop = int(np.linalg.norm(top[-1] - bottom[-1]) / 4 // step)
    if head_drop + tail_drop + 2 <= len(center):
        keep = slice(head_drop, len(center) - tail_drop)
        top, bottom, center = top[keep], bottom[keep], center[keep]
    if len(center) < 2:
        return None
    top_in = center + (top - center) * shrink_ratio
    bottom_in = center + (bottom - center) * shrink_ratio
    return np.concatenate([top_in, bottom_in[::-1]], axis=0)  # (2Q, 2) = union of the per-segment quads


# ------------------------------------------------------------------------------------------------- NMS


def _valid_geometries(polygons: np.ndarray) -> np.ndarray:
    """(M, N, 2) point arrays -> (M,) shapely geometries; invalid ones (self-intersecting) repaired as
    tcm.evaluation does (make_valid, structure method, collapsed parts dropped)."""
    geoms = shapely.polygons(polygons)  # (M,) closed rings
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        geoms[bad] = shapely.make_valid(geoms[bad], method="structure", keep_collapsed=False)
    return geoms


def poly_nms(polygons: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    """Greedy polygon NMS. polygons (M, N, 2), scores (M,) -> kept indices, best first.

    IoU by shapely on invalid-repaired polygons (mmocr 0.x `poly_nms`). Each round intersects the kept polygon
    only with the remaining ones whose bounding boxes overlap it (one vectorised call), so thousands of small
    disjoint candidates (an untrained network) cost ~M numpy box tests per kept polygon, not M shapely calls.
    A polygon with no area (collapsed, e.g. all points truncated onto one pixel) can match no text: dropped.
    """
    geoms = _valid_geometries(polygons)
    areas = shapely.area(geoms)  # (M,)
    boxes = np.concatenate([polygons.min(axis=1), polygons.max(axis=1)], axis=1)  # (M, 4) x0 y0 x1 y1
    order = np.argsort(-scores, kind="stable")
    order = order[areas[order] > 0]
    keep: list[int] = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        b = boxes[rest]  # (R, 4)
        near = (
            (b[:, 0] <= boxes[i, 2])
            & (b[:, 2] >= boxes[i, 0])
            & (b[:, 1] <= boxes[i, 3])
            & (b[:, 3] >= boxes[i, 1])
        )  # (R,) bounding boxes overlap: the only candidates with IoU > 0
        cand = rest[near]
        inter = shapely.area(shapely.intersection(geoms[i], geoms[cand]))  # (R_near,)
        iou = inter / (areas[i] + areas[cand] - inter)  # union > 0: both areas are
        suppressed = np.zeros(rest.size, dtype=bool)
        suppressed[np.flatnonzero(near)[iou > thresh]] = True
        order = rest[~suppressed]
    return np.asarray(keep, dtype=np.int64)


def _unique_best(polygons: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop repeated (integer) polygons, keeping each one's best score: copies only cost NMS time."""
    M, N, _ = polygons.shape
    order = np.argsort(-scores, kind="stable")
    _, first = np.unique(polygons[order].reshape(M, N * 2), axis=0, return_index=True)  # rows (M, 2N)
    pick = order[np.sort(first)]  # best-first, one per distinct polygon
    return polygons[pick], scores[pick]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """uint8 {0,1} mask -> the same with every enclosed background region filled."""
    H, W = mask.shape
    padded = np.zeros((H + 2, W + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((H + 4, W + 4), np.uint8), (0, 0), 1)  # outside background -> 1
    holes = flood[1:-1, 1:-1] == 0
    return (mask.astype(bool) | holes).astype(np.uint8)


def _softmax_fg(logits: np.ndarray) -> np.ndarray:
    """(2, H, W) logits [bg, fg] -> (H, W) foreground probability."""
    return 1.0 / (1.0 + np.exp(np.clip(logits[0] - logits[1], -60.0, 60.0)))


# ----------------------------------------------------------------------------------------------- codec


class FCECodec:
    """encode(polygons) -> per-level Fourier targets; decode(head outputs) -> polygons. See the module doc."""

    def __init__(self, cfg: FCEHeadConfig):
        if len(cfg.level_proportion_range) != len(cfg.strides):
            raise ValueError(
                f"tcm/heads/fce_codec.py: FCEHeadConfig.level_proportion_range has "
                f"{len(cfg.level_proportion_range)} ranges but strides has {len(cfg.strides)} levels"
            )
        self.cfg = cfg
        self.k = cfg.fourier_degree

    # ---------------------------------------------------------------- encode

    def level_of(self, polygon: np.ndarray, height: int) -> list[int]:
        """Levels whose open range (lo, hi) holds max(bbox w, h) / image height (bbox of the int polygon)."""
        proportion = self.proportion(polygon, height)
        return [i for i, (lo, hi) in enumerate(self.cfg.level_proportion_range) if lo < proportion < hi]

    @staticmethod
    def proportion(polygon: np.ndarray, height: int) -> float:
        """max(bbox w, h) / image height, bbox of the int polygon (FCENet's level assignment)."""
        _, _, w, h = cv2.boundingRect(polygon.astype(np.int32).reshape(-1, 1, 2))
        return max(w, h) / (height + 1e-8)

    def encode(
        self, polygons: list[np.ndarray], ignore: list[bool], height: int, width: int
    ) -> dict[str, np.ndarray]:
        if len(polygons) != len(ignore):
            raise ValueError(
                f"tcm/heads/fce_codec.py: encode got {len(polygons)} polygons but {len(ignore)} ignore flags"
            )
        polys = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons]
        per_level: list[list[tuple[np.ndarray, bool]]] = [[] for _ in self.cfg.strides]
        for poly, ign in zip(polys, ignore, strict=True):
            if len(poly) < 3:
                continue  # not a region; ingest quarantines these, augmentation may still produce them
            for lv in self.level_of(poly, height):
                per_level[lv].append((poly / self.cfg.strides[lv], ign))
        out = {
            f"level_s{s}": self._encode_level(items, height // s, width // s)
            for s, items in zip(self.cfg.strides, per_level, strict=True)
        }
        out.update(self._aux_maps(polys, ignore, height, width))
        return out

    def _aux_maps(
        self, polys: list[np.ndarray], ignore: list[bool], height: int, width: int
    ) -> dict[str, np.ndarray]:
        """The instance-language matching target on the score map's own grid, as released
        (FCENetCLIPTargets(pix_text_match_gt_size_divisors=32) adds a fourth "level" at stride 32 holding every
        polygon whose size proportion lies in (0, 1)): aux_text = its text region, aux_mask = 0 in its ignored
        polygons; (H/32, W/32), no upsampling of the logits (FCEIdentityHead)."""
        h, w = height // AUX_STRIDE, width // AUX_STRIDE
        text = np.zeros((h, w), np.uint8)
        mask = np.ones((h, w), np.uint8)
        lo, hi = AUX_PROPORTION
        for poly, ign in zip(polys, ignore, strict=True):
            if len(poly) < 3 or not lo < self.proportion(poly, height) < hi:
                continue
            # floor, as the released int32 cast of in-image coordinates: cell j then stands for the input point
            # 32 j + 16, about the centre (32 j + 15.5) of the score-map pixel it supervises
            cells = np.floor(poly / AUX_STRIDE).astype(np.int32)
            cv2.fillPoly(mask if ign else text, [cells], 0 if ign else 1)
        return {"aux_text": text.astype(np.float32), "aux_mask": mask.astype(np.float32)}

    def _encode_level(self, items: list[tuple[np.ndarray, bool]], h: int, w: int) -> np.ndarray:
        """Polygons in this level's coordinates -> (4k+5, h, w) [TR, TCL, mask, real(2k+1), imag(2k+1)]."""
        k, cfg = self.k, self.cfg
        tr = np.zeros((h, w), np.uint8)
        tcl = np.zeros((h, w), np.uint8)
        mask = np.ones((h, w), np.uint8)
        real = np.zeros((2 * k + 1, h, w), np.float32)
        imag = np.zeros((2 * k + 1, h, w), np.float32)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)  # (h, w) pixel coordinates of this level
        for poly, ign in items:
            ipoly = [np.round(poly).astype(np.int32)]
            if ign:
                cv2.fillPoly(mask, ipoly, 0)
                continue
            cv2.fillPoly(tr, ipoly, 1)
            center = center_region_polygon(
                poly, cfg.resample_step, cfg.center_region_shrink_ratio, cfg.orientation_thr
            )
            if center is not None:
                cv2.fillPoly(tcl, [np.round(center).astype(np.int32)], 1)
            inside = np.zeros((h, w), np.uint8)
            cv2.fillPoly(inside, ipoly, 1)
            sel = inside.astype(bool)  # (h, w)
            coeffs = fourier_signature(poly, k)  # (2k+1,) complex c_-k..c_k
            real[:, sel] = coeffs.real[:, None].astype(np.float32)  # later polygons overwrite earlier ones
            imag[:, sel] = coeffs.imag[:, None].astype(np.float32)
            real[k, sel] = coeffs[k].real - xs[sel]  # c_0 - (x + iy): centroid offset from the pixel
            imag[k, sel] = coeffs[k].imag - ys[sel]
        head = np.stack([tr, tcl, mask]).astype(np.float32)  # (3, h, w)
        return np.concatenate([head, real, imag], axis=0)  # (4k+5, h, w)

    # -------------------------------------------------------------- perfect outputs

    def targets_as_outputs(self, targets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Logits a perfect network would give: ±PERFECT_LOGIT for TR/TCL, reg = the GT coefficient maps."""
        out: dict[str, np.ndarray] = {}
        for s in self.cfg.strides:
            level = targets[f"level_s{s}"]  # (4k+5, h, w)
            fg = np.stack([level[0], level[1]]) * 2.0 - 1.0  # (2, h, w) in {-1, 1}: TR, TCL
            # (4, h, w) logits [TR bg, TR fg, TCL bg, TCL fg]
            cls = np.stack([-fg[0], fg[0], -fg[1], fg[1]]) * PERFECT_LOGIT
            out[f"cls_s{s}"] = cls.astype(np.float32)
            out[f"reg_s{s}"] = level[3:].astype(np.float32)  # (2(2k+1), h, w)
        return out

    # ---------------------------------------------------------------- decode

    def decode(
        self, outputs: dict[str, np.ndarray], scale: tuple[float, float] = (1.0, 1.0)
    ) -> list[Detection]:
        cfg = self.cfg
        polys, scores = [], []
        for s in cfg.strides:
            p, sc = self._decode_level(np.asarray(outputs[f"cls_s{s}"]), np.asarray(outputs[f"reg_s{s}"]), s)
            keep = poly_nms(p, sc, cfg.nms_thresh) if len(p) else np.zeros(0, np.int64)
            polys.append(p[keep])
            scores.append(sc[keep])
        all_polys = np.concatenate(polys)  # (M, N, 2)
        all_scores = np.concatenate(scores)  # (M,)
        keep = poly_nms(all_polys, all_scores, cfg.nms_thresh) if len(all_polys) else []
        sx, sy = scale
        dets = []
        for i in keep:
            pts = all_polys[i]
            if cfg.mode == "quad":
                pts = min_area_quad(pts)  # (4, 2)
            pts = pts * np.array([sx, sy], dtype=np.float64)
            dets.append(Detection(points=to_clockwise(pts), score=float(all_scores[i])))
        return dets

    def _decode_level(self, cls: np.ndarray, reg: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
        """One level's (4, h, w) logits and (2(2k+1), h, w) coefficients -> candidates after per-region NMS.

        Returns polygons (M, num_reconstr_points, 2) in input pixels (truncated to int) and scores (M,).
        """
        cfg, k = self.cfg, self.k
        J = 2 * k + 1
        score = _softmax_fg(cls[0:2]) ** cfg.alpha * _softmax_fg(cls[2:4]) ** cfg.beta  # (h, w)
        regions = _fill_holes((score > cfg.score_thresh).astype(np.uint8))
        count, labels = cv2.connectedComponents(regions, connectivity=8)  # = filled outer contours
        all_ys, all_xs = np.nonzero(labels)  # (T,) every candidate pixel
        by_label = np.argsort(labels[all_ys, all_xs], kind="stable")  # (T,) grouped by text region
        sizes = np.bincount(labels[all_ys, all_xs], minlength=count)[1:]  # (count-1,) pixels per region
        polys, scores = [], []
        for region in np.split(by_label, np.cumsum(sizes)[:-1]) if len(by_label) else []:
            ys, xs = all_ys[region], all_xs[region]  # (M,) candidate pixels of this text region
            real = reg[:J, ys, xs].T.astype(np.float64)  # (M, 2k+1)
            imag = reg[J:, ys, xs].T.astype(np.float64)  # (M, 2k+1)
            real[:, k] += xs  # c_0 += x + iy: back from the pixel offset to the centroid
            imag[:, k] += ys
            cand = np.trunc(fourier_to_polygons(real * stride, imag * stride, cfg.num_reconstr_points))
            cand_scores = score[ys, xs].astype(np.float64)  # (M,)
            cand, cand_scores = _unique_best(cand, cand_scores)
            keep = poly_nms(cand, cand_scores, cfg.nms_thresh)
            polys.append(cand[keep])
            scores.append(cand_scores[keep])
        if not polys:
            return np.zeros((0, cfg.num_reconstr_points, 2)), np.zeros(0)
        return np.concatenate(polys), np.concatenate(scores)
