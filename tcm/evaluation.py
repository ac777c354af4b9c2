"""Text-detection evaluation: the ICDAR 2015 IoU protocol (RRC "HmeanIoU"), DetEval, and a score sweep.

IoU protocol (`IoUProtocol`, exactly the RRC script, ../shared/reference/detectors.md §4.1), per image:
1. a detection D is *don't care* when area(D ∩ G) / area(D) > 0.5 for some don't-care ground truth G
   (0 when area(D) = 0);
2. IoU = area(D ∩ G) / (area(D) + area(G) - area(D ∩ G)) for every (G, D) pair;
3. greedy one-to-one matching in GT-major order (for each GT in file order, the first unmatched detection in
   order): both must be care and IoU > 0.5 (strict);
and over the dataset (never a mean of per-image scores): R = Σmatched / Σcare GT, P = Σmatched / Σcare det,
H = 2PR / (P + R), each 0 where its denominator is 0.

DetEval (`DetEvalProtocol`, §4.3): area recall r = |G∩D|/|G|, area precision p = |G∩D|/|D|. The variant is
mmocr 0.x `hmean_ic13` (the lineage TCM reports with): one-to-one needs r > tr and p > tp (strict) with
exactly one such partner on both sides and a normalised centre distance 2·|c_G - c_D| / (diag_G + diag_D) <
1 (centre and diagonal of the bounding box, DB's choice; mmocr's corner 0 -> 2 distance is the same for
rectangles); then one-to-many per unmatched care GT (sum r over unmatched care dets with p >= tp, match if
the sum >= tr; credit 0.8 to recall and 0.8 x #dets to precision); then many-to-one per unmatched care det
(sum p over unmatched care GTs with r >= tr, match if >= tp; credit 1 x #GTs to recall and 1 to precision).
One departure from mmocr, as DB `deteval.py` and Wolf & Jolion's original: a "many" needs at least
`min_many = 2` partners, so one box over two GTs is a many-to-one match, not a one-to-many match with a single
detection (mmocr behaviour: `min_many=1`). No rounding of r and p (Total-Text's script rounds to 2 decimals).
Don't-care detections are removed first with the IoU protocol's rule. IC13 thresholds by default
(tr 0.8, tp 0.4); Total-Text's recommended ones are `DetEvalProtocol(tr=0.7, tp=0.6)`.

Polygons (deterministic rule, applied to ground truth and detections alike, in `to_geometries`):
- fewer than 3 points or a non-finite coordinate -> empty polygon (area 0);
- orientation is irrelevant: clockwise and counter-clockwise point orders give the same region
  (`clockwise` normalises an order to the RRC's clockwise convention where a file needs it);
- an invalid polygon (self-intersecting such as a bow-tie, or with a collapsed spike) is repaired with
  `shapely.make_valid(method="structure", keep_collapsed=False)`: the regions its rings enclose, lines and
  points dropped. A bow-tie becomes its two triangles (area = both lobes), whatever its start point or
  order. (The RRC script hands such polygons to Polygon2 as they are, DB's evaluator drops them, mmocr uses
  `buffer(0)`, which keeps one lobe depending on the order.);
- what is still empty after that (collinear or repeated points) has area 0: IoU 0 with everything, never
  matched and never don't care; a zero-area care detection still counts as a (false) detection and a
  zero-area care GT as a (missed) ground truth, as the RRC script counts them.

Speed (benchmarks/eval_speed.py): images are prepared CHUNK at a time; only pairs whose bounding boxes
overlap are intersected. Pairs of convex polygons (every valid quadrilateral detection, up to
FAST_MAX_POINTS corners) get their intersection area from batched numpy clipping (Green's theorem over the
clipped edges); the others from one vectorised GEOS call. The two differ by ~1e-13, so any ratio within
SETTLE_TOL of a threshold is recomputed by GEOS before the comparison: decisions are exactly those of a plain
shapely evaluation. The sweep computes the areas once per image and only re-thresholds (mmocr issue #847).
Inputs may be (ground truth, detections) pairs or `PackedImage`s (all corners of an image in one array: what
file readers build without a Python object per polygon). `evaluate(..., keep_iou=False)` keeps no (G, D) IoU
matrix and, for the IoU protocol, skips pairs whose bounding-box bound (inter <= area of the boxes'
intersection) cannot reach IoU > thr or a don't-care cover > thr: the same decisions, fewer intersections.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import shapely
from shapely.errors import GEOSException

from tcm.types import Detection, Instance

# mmocr 0.x `eval_hmean` / TCM: 0.3 .. 0.9 step 0.1, both ends included (written out: no float drift).
THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SWEEP_NOTE = (
    "the best threshold was picked on the evaluated set itself, so its hmean is optimistic; "
    "report a threshold chosen on validation data for comparable numbers"
)


@dataclass(frozen=True)
class IoUProtocol:
    """ICDAR 2015 hmean-IoU (RRC script)."""

    kind: Literal["iou"] = "iou"
    iou_thr: float = 0.5  # RRC IOU_CONSTRAINT (match needs IoU > 0.5, strict)
    dc_thr: float = 0.5  # RRC AREA_PRECISION_CONSTRAINT (don't-care det: inter/area(D) > 0.5)


@dataclass(frozen=True)
class DetEvalProtocol:
    """DetEval (ICDAR 2013 style; Total-Text with tr=0.7, tp=0.6). Variant: see the module docstring."""

    kind: Literal["deteval"] = "deteval"
    tr: float = 0.8  # area-recall threshold (IC13 DetEval)
    tp: float = 0.4  # area-precision threshold (IC13 DetEval)
    center_thr: float = 1.0  # normalised centre distance for one-to-one (IC13 DetEval)
    one2one: float = 1.0  # credit of a one-to-one match (IC13 DetEval)
    one2many: float = 0.8  # credit of a split GT (recall 0.8, precision 0.8 x #dets; IC13 DetEval)
    many2one: float = 1.0  # credit of a merged detection (IC13 DetEval)
    min_many: int = 2  # a "many" has at least two partners (DB deteval.py, Wolf & Jolion; mmocr uses 1)
    dc_thr: float = 0.5  # don't-care det: inter/area(D) > 0.5 (RRC rule; Total-Text's script uses it too)


Protocol = IoUProtocol | DetEvalProtocol


def resolve_protocol(protocol: str | Protocol) -> Protocol:
    """`"iou"` / `"deteval"` (defaults) or a protocol object as is; ValueError otherwise."""
    match protocol:
        case IoUProtocol() | DetEvalProtocol():
            return protocol
        case "iou":
            return IoUProtocol()
        case "deteval":
            return DetEvalProtocol()
        case _:
            raise ValueError(f"unknown evaluation protocol {protocol!r}: use 'iou' or 'deteval'")


# --------------------------------------------------------------------------------------------- geometry

# Ratios from numpy clipping differ from GEOS's by ~1e-13: calls closer than this to a threshold go to GEOS.
SETTLE_TOL = 1e-9
FAST_MAX_POINTS = 16  # convex polygons with more corners go to GEOS: bounds the padded ring array
CHUNK = 64  # images prepared together: amortises numpy call overhead; memory stays small


def clockwise(points: np.ndarray) -> np.ndarray:
    """Points (P, 2) in the RRC's clockwise order (image coordinates, y down).

    Counter-clockwise input is reversed keeping its first corner (usually the top left) first.
    The RRC test: sum over edges of (x_{i+1} - x_i) * (y_{i+1} + y_i) <= 0 means clockwise.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)  # (P, 2)
    nxt = np.roll(pts, -1, axis=0)  # (P, 2) the next corner of every edge
    edge_sum = float(np.sum((nxt[:, 0] - pts[:, 0]) * (nxt[:, 1] + pts[:, 1])))
    return pts if edge_sum <= 0 else np.concatenate([pts[:1], pts[:0:-1]])  # same first corner, reversed


def edge_sums(packed: PackedPolygons) -> np.ndarray:
    """The RRC orientation sum (N,) of every polygon, vectorised: sum over edges of (x' - x) * (y' + y).

    <= 0: clockwise on the screen (the RRC accepts it); > 0: counter-clockwise. Shapely's `is_ccw` (what
    AdelaiDet's Total-Text evaluator checks) is True exactly when this sum is < 0.
    """
    flat, sizes = packed.flat, packed.sizes  # (T, 2), (N,)
    N, T = len(sizes), len(flat)
    if N == 0 or T == 0:
        return np.zeros(N)
    start = np.cumsum(sizes) - sizes  # (N,) first corner of each polygon
    owner = np.repeat(np.arange(N), sizes)  # (T,) polygon of each corner
    k = np.arange(T) - start[owner]  # (T,) index of each corner within its polygon
    nxt = np.where(k + 1 == sizes[owner], start[owner], np.arange(T) + 1)  # (T,) the next corner, wrapping
    terms = (flat[nxt, 0] - flat[:, 0]) * (flat[nxt, 1] + flat[:, 1])  # (T,) RRC edge terms
    return np.bincount(owner, weights=terms, minlength=N)  # (N,) summed per polygon


def clockwise_packed(packed: PackedPolygons) -> tuple[PackedPolygons, np.ndarray]:
    """Every polygon of `packed` in the RRC's clockwise order, vectorised; also which ones were reversed (N,).

    The same rule as `clockwise` (RRC edge sum > 0 -> reversed keeping the first corner), for a whole file's
    polygons in a handful of numpy calls instead of one call per line.
    """
    flat, sizes = packed.flat, packed.sizes  # (T, 2), (N,)
    N, T = len(sizes), len(flat)
    ccw = edge_sums(packed) > 0  # (N,)
    if not ccw.any():
        return packed, ccw
    start = np.cumsum(sizes) - sizes  # (N,) first corner of each polygon
    owner = np.repeat(np.arange(N), sizes)  # (T,) polygon of each corner
    k = np.arange(T) - start[owner]  # (T,) index of each corner within its polygon
    rev = ccw[owner]  # (T,) corners of reversed polygons
    perm = np.where(rev & (k > 0), start[owner] + sizes[owner] - k, np.arange(T))  # (T,) first corner kept
    return PackedPolygons(flat[perm], sizes), ccw


def _one_geometry(pts: np.ndarray) -> shapely.Geometry:
    """Slow path for one polygon the vectorised constructor rejected (e.g. 3 points with first == last)."""
    try:
        geom = shapely.Polygon(pts)
    except (GEOSException, ValueError):
        return shapely.Polygon()
    if not geom.is_valid:
        geom = shapely.make_valid(geom, method="structure", keep_collapsed=False)
    return geom


def to_geometries(polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Shapely geometries (N,) object array for N point arrays, by the module's deterministic polygon rule."""
    N = len(polygons)
    out = np.array([shapely.Polygon()] * N, dtype=object)  # (N,) empty by default
    arrays = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons]  # each (P_i, 2)
    ok = [i for i, a in enumerate(arrays) if len(a) >= 3 and np.isfinite(a).all()]
    if not ok:
        return out
    counts = [len(arrays[i]) for i in ok]
    coords = np.concatenate([arrays[i] for i in ok])  # (sum P_i, 2)
    ring_of = np.repeat(np.arange(len(ok)), counts)  # (sum P_i,) which polygon each point belongs to
    try:
        geoms = shapely.polygons(shapely.linearrings(coords, indices=ring_of))  # (len(ok),)
    except (GEOSException, ValueError):
        geoms = np.array([_one_geometry(arrays[i]) for i in ok], dtype=object)
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        geoms[bad] = shapely.make_valid(geoms[bad], method="structure", keep_collapsed=False)
    out[ok] = geoms
    return out


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """z of the 2-D cross product over the last axis (broadcast)."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _convex_info(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For n polygons of P corners (n, P, 2): (convex (n,), positive (n,), area (n,)).

    convex: simple and strictly convex (collinear corners allowed; no repeated corner, no spike, winds once),
    the polygons the numpy clipping handles. positive: the shoelace sum is > 0 (interior left of every edge).
    area: |shoelace| in GEOS's own formula and summation order (x relative to corner 0), so it matches
    shapely's area of the same ring.
    """
    n, P, _ = block.shape
    with np.errstate(invalid="ignore"):
        e = np.roll(block, -1, axis=1) - block  # (n, P, 2) edge vectors
        e_next = np.roll(e, -1, axis=1)  # (n, P, 2)
        turn_cross = _cross(e, e_next)  # (n, P)
        turn_dot = e[..., 0] * e_next[..., 0] + e[..., 1] * e_next[..., 1]  # (n, P)
        convex = (
            np.isfinite(block).all(axis=(1, 2))
            & (P >= 3)
            & ((e[..., 0] != 0) | (e[..., 1] != 0)).all(-1)  # no repeated corner
            & ~((turn_cross == 0) & (turn_dot <= 0)).any(-1)  # no spike (a turn of 180 degrees)
            & ((turn_cross >= 0).all(-1) | (turn_cross <= 0).all(-1))  # every turn the same way
        )
        if P > 4:  # same-way turns each < 180 degrees sum to < P x 180: winding twice needs 5+ corners
            turning = np.arctan2(turn_cross, turn_dot).sum(-1)  # (n,) ±2π when the polygon winds once
            convex &= np.abs(np.abs(turning) - 2 * np.pi) < 1e-6
        x = block[:, :, 0] - block[:, :1, 0]  # (n, P)
        y = block[:, :, 1]  # (n, P)
        signed = np.zeros(n)
        for i in range(1, P):  # GEOS Area::ofRingSigned over the closed ring, summed in its order
            signed = signed + x[:, i] * (y[:, i - 1] - y[:, (i + 1) % P])
    return convex, signed < 0, np.abs(signed / 2.0)  # GEOS's sign is the opposite of the shoelace's


def _flatten(points: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All corners (sum P_i, 2) float64 and the corner counts (N,) of N point arrays (P_i, 2) or flat (2 P_i,)."""
    sizes = np.fromiter((len(p) for p in points), dtype=np.int64, count=len(points))  # (N,)
    try:
        flat = np.concatenate(points, dtype=np.float64) if len(points) else np.zeros((0, 2))
        if flat.ndim == 2 and flat.shape[1] == 2:
            return flat, sizes  # fast path: every element already (P_i, 2)
    except ValueError:
        pass
    arrays = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in points]  # each (P_i, 2)
    return np.concatenate(arrays), np.array([len(a) for a in arrays], dtype=np.int64)


@dataclass(frozen=True)
class PackedPolygons:
    """N polygons in two arrays: every corner (sum P_i, 2) float64 and the corner counts (N,) int64.

    The form readers that parse a whole file at once hand over (no per-polygon array, no per-polygon object).
    """

    flat: np.ndarray  # (sum P_i, 2) float64
    sizes: np.ndarray  # (N,) int64

    @staticmethod
    def of(points: Sequence[np.ndarray]) -> PackedPolygons:
        """From N point arrays (P_i, 2) or flat (2 P_i,)."""
        return PackedPolygons(*_flatten(points))

    @staticmethod
    def quads(corners: np.ndarray) -> PackedPolygons:
        """From an (N, 4, 2) (or (N, 8)) array of quadrilaterals."""
        N = len(corners)
        flat = np.asarray(corners, dtype=np.float64).reshape(N * 4, 2)  # (N, 4, 2) -> (4N, 2)
        return PackedPolygons(flat, np.full(N, 4, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.sizes)


@dataclass(frozen=True)
class PackedImage:
    """One image's ground truth and detections, packed: what `evaluate` takes besides (gt, dets) pairs."""

    gt: PackedPolygons
    gt_ignore: np.ndarray  # (G,) bool
    det: PackedPolygons
    scores: np.ndarray  # (D,) float64

    @staticmethod
    def of(gt: Sequence[Instance], dets: Sequence[Detection]) -> PackedImage:
        return PackedImage(
            gt=PackedPolygons.of([g.points for g in gt]),
            gt_ignore=np.array([bool(g.ignore) for g in gt], dtype=bool).reshape(-1),  # (G,)
            det=PackedPolygons.of([d.points for d in dets]),
            scores=np.array([float(d.score) for d in dets], dtype=np.float64).reshape(-1),  # (D,)
        )


ImageInput = tuple[Sequence[Instance], Sequence[Detection]] | PackedImage


def _packed(item: ImageInput) -> PackedImage:
    match item:
        case PackedImage():
            return item
        case (gt, dets):
            return PackedImage.of(gt, dets)
        case _:
            raise TypeError(f"expected a (ground truth, detections) pair or a PackedImage, got {type(item)}")


def _concat(parts: Sequence[PackedPolygons]) -> PackedPolygons:
    """Several images' polygons as one PackedPolygons (one concatenation per chunk, not per polygon)."""
    if not parts:
        return PackedPolygons(np.zeros((0, 2)), np.zeros(0, dtype=np.int64))
    return PackedPolygons(np.concatenate([p.flat for p in parts]), np.concatenate([p.sizes for p in parts]))


class _Polygons:
    """N polygons: numpy rings for the convex ones, shapely geometries built only when needed.

    One instance holds a whole chunk of images; `view` gives an image's slice sharing the arrays (so a GEOS
    area settled through a view is seen by everyone).
    """

    def __init__(self, packed: PackedPolygons):
        N = len(packed)
        self._flat = packed.flat.reshape(-1, 2)  # (sum P_i, 2) all corners
        self.sizes = packed.sizes.astype(np.int64, copy=False)  # (N,) corners P_i
        self._start = np.concatenate(
            [[0], np.cumsum(self.sizes)]
        )  # (N + 1,) polygon i = flat[start[i]:start[i+1]]
        fast_sizes = self.sizes[(self.sizes >= 3) & (self.sizes <= FAST_MAX_POINTS)]
        self.ring = np.zeros((N, int(fast_sizes.max(initial=3)), 2))  # (N, P_max, 2) interior on the left
        self.convex = np.zeros(N, dtype=bool)  # (N,) handled by numpy clipping
        self.area = np.zeros(N)  # (N,)
        self.exact = np.zeros(N, dtype=bool)  # (N,) area taken from GEOS
        self.bounds = np.full((N, 4), np.nan)  # (N, 4) xmin, ymin, xmax, ymax of the points; NaN when empty
        self._geoms = np.full(N, None, dtype=object)  # (N,) lazily built shapely geometries
        for P in np.unique(self.sizes[self.sizes >= 3]).tolist():
            idx = np.flatnonzero(self.sizes == P)  # (n,)
            block = self._flat[self._start[idx][:, None] + np.arange(P)]  # (n, P, 2)
            finite = np.isfinite(block).all(axis=(1, 2))  # (n,)
            self.bounds[idx[finite]] = np.concatenate([block.min(1), block.max(1)], axis=1)[finite]
            if P > FAST_MAX_POINTS:
                continue
            convex, positive, area = _convex_info(block)
            self.ring[idx, :P] = np.where(positive[:, None, None], block, block[:, ::-1])  # (n, P, 2)
            self.convex[idx] = convex
            self.area[idx] = area
        other = np.flatnonzero(~self.convex)
        if other.size:  # non-convex, invalid, degenerate or many-cornered: areas by the shapely rule
            self.area[other] = shapely.area(self.geoms(other))
            self.exact[other] = True

    def view(self, start: int, stop: int) -> _Polygons:
        """Polygons start:stop, sharing this object's arrays."""
        part = object.__new__(_Polygons)
        part._flat = self._flat
        part._start = self._start[start : stop + 1]
        for name in ("sizes", "ring", "convex", "area", "exact", "bounds", "_geoms"):
            setattr(part, name, getattr(self, name)[start:stop])  # numpy slices are views
        return part

    def geoms(self, idx: np.ndarray) -> np.ndarray:
        """Shapely geometries (len(idx),) by `to_geometries`' rule, built once per polygon."""
        missing = np.unique(idx[[self._geoms[i] is None for i in idx]]) if len(idx) else idx
        if missing.size:
            pts = [self._flat[self._start[i] : self._start[i + 1]] for i in missing]  # each (P_i, 2)
            self._geoms[missing] = to_geometries(pts)
        return self._geoms[idx]

    def settle_area(self, idx: np.ndarray) -> None:
        """Replace the numpy areas of polygons idx by GEOS's."""
        idx = np.unique(idx[~self.exact[idx]])
        if idx.size:
            self.area[idx] = shapely.area(self.geoms(idx))
            self.exact[idx] = True


def _convex_intersection_area(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Intersection areas (n,) of convex, positively oriented rings A (n, Pa, 2) and B (n, Pb, 2).

    Green's theorem: the boundary of A ∩ B is the part of A's edges inside B plus the part of B's edges inside
    A; each edge is clipped to the other polygon's half-planes (Cyrus-Beck) and contributes ½ cross(q0, q1).
    An edge lying on the other polygon's boundary counts once (A's edge, when both run the same way) or not at
    all (opposite ways: the overlap there has no width).
    """
    origin = A[:, :1, :]  # (n, 1, 2): local coordinates keep the shoelace sums small
    A, B = A - origin, B - origin
    Ax, Ay, Bx, By = A[..., 0], A[..., 1], B[..., 0], B[..., 1]  # (n, Pa), (n, Pa), (n, Pb), (n, Pb)
    return _clipped_boundary(Ax, Ay, Bx, By, owner=True) + _clipped_boundary(Bx, By, Ax, Ay, owner=False)


def _clipped_boundary(
    Sx: np.ndarray, Sy: np.ndarray, Cx: np.ndarray, Cy: np.ndarray, owner: bool
) -> np.ndarray:
    """½ Σ cross(q0, q1) over the parts [q0, q1] of S's edges inside C. S (n, Ps), C (n, Pc) -> (n,).

    C's edges all have a length (convex rings have no repeated corner), so each is a real half-plane.
    """
    n, Ps = Sx.shape
    Pc = Cx.shape[1]
    dx, dy = np.roll(Sx, -1, axis=1) - Sx, np.roll(Sy, -1, axis=1) - Sy  # (n, Ps) edge vectors of S
    t_in = np.zeros((n, Ps))  # entering parameter along each S edge, max(0, ...)
    t_out = np.ones((n, Ps))  # leaving parameter, min(1, ...)
    blocked = np.zeros((n, Ps), dtype=bool)  # parallel to and outside (or on) one of C's edges
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(Pc):  # one half-plane of C at a time: elementwise ops only, no tiny-axis reductions
            cx, cy = Cx[:, k : k + 1], Cy[:, k : k + 1]  # (n, 1) corner k
            ex, ey = Cx[:, (k + 1) % Pc, None] - cx, Cy[:, (k + 1) % Pc, None] - cy  # (n, 1) edge k
            alpha = ex * (Sy - cy) - ey * (Sx - cx)  # (n, Ps) >= 0: S's corner on the inner side
            beta = ex * dy - ey * dx  # (n, Ps) > 0: S's edge heads inwards
            t = -alpha / beta  # (n, Ps) where S's edge crosses the line of C's edge
            np.maximum(t_in, t, out=t_in, where=beta > 0)
            np.minimum(t_out, t, out=t_out, where=beta < 0)
            parallel = beta == 0  # (n, Ps) rare outside axis-aligned input
            if parallel.any():
                if owner:  # A's edge on B's boundary counts when both run the same way
                    same_way = ex * dx + ey * dy > 0
                    blocked |= parallel & ((alpha < 0) | ((alpha == 0) & ~same_way))
                else:  # B's edge on A's boundary: A's own edge counted it (or it cancels)
                    blocked |= parallel & (alpha <= 0)
    inside = (t_out > t_in) & ~blocked  # (n, Ps)
    q0x, q0y = Sx + t_in * dx, Sy + t_in * dy  # (n, Ps)
    q1x, q1y = Sx + t_out * dx, Sy + t_out * dy  # (n, Ps)
    return 0.5 * np.where(inside, q0x * q1y - q0y * q1x, 0.0).sum(axis=1)


def _geos_intersection_area(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """GEOS intersection areas (n,) of geometry arrays; a pair GEOS fails on counts 0 (RRC: exception -> 0)."""
    try:
        return shapely.area(shapely.intersection(a, b))
    except GEOSException:
        return np.array([_safe_intersection_area(x, y) for x, y in zip(a, b, strict=True)])


def _safe_intersection_area(a: shapely.Geometry, b: shapely.Geometry) -> float:
    try:
        return float(a.intersection(b).area)
    except GEOSException:
        return 0.0


@dataclass(frozen=True)
class _Prune:
    """Skip pairs that cannot change an IoU-protocol decision (only when no IoU matrix is returned)."""

    iou_thr: float
    dc_thr: float
    gt_ignore: np.ndarray  # (G_chunk,) bool


PRUNE_SLACK = 1e-6  # pairs whose bound is within this of a threshold are computed (>> SETTLE_TOL, float error)


def _prunable(gt: _Polygons, det: _Polygons, g: np.ndarray, d: np.ndarray, prune: _Prune) -> np.ndarray:
    """(n,) bool: pairs whose intersection cannot reach IoU > iou_thr, nor (with a don't-care GT) cover more
    than dc_thr of the detection. The bound: inter <= B = area(bbox G ∩ bbox D), so IoU <= B / (aG + aD - B)
    and inter / aD <= B / aD. Such pairs keep intersection 0: every decision is the same."""
    gb, db = gt.bounds[g], det.bounds[d]  # (n, 4), (n, 4)
    w = np.minimum(gb[:, 2], db[:, 2]) - np.maximum(gb[:, 0], db[:, 0])  # (n,)
    h = np.minimum(gb[:, 3], db[:, 3]) - np.maximum(gb[:, 1], db[:, 1])  # (n,)
    bound = np.maximum(w, 0) * np.maximum(h, 0)  # (n,)
    a_g, a_d = gt.area[g], det.area[d]  # (n,), (n,)
    could_match = bound > (prune.iou_thr - PRUNE_SLACK) * (a_g + a_d - bound)
    could_cover = prune.gt_ignore[g] & (bound > (prune.dc_thr - PRUNE_SLACK) * a_d)
    return ~(could_match | could_cover)


def _intersections(
    gt: _Polygons, det: _Polygons, gt_split: np.ndarray, det_split: np.ndarray, prune: _Prune | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image of a chunk: intersection areas (G_i, D_i) and which came from numpy clipping (G_i, D_i) bool.

    gt_split / det_split (I + 1,): image i owns polygons split[i]:split[i + 1]. Only pairs whose bounding
    boxes overlap are computed, for the whole chunk at once: convex pairs by numpy clipping (grouped by
    corner counts), the rest by one vectorised GEOS call. With `prune`, pairs that cannot change a decision
    are skipped too (their intersection stays 0).
    """
    g_parts, d_parts, counts = [], [], []
    for i in range(len(gt_split) - 1):
        g0, d0 = gt_split[i], det_split[i]
        gb, db = gt.bounds[g0 : gt_split[i + 1]], det.bounds[d0 : det_split[i + 1]]  # (G_i, 4), (D_i, 4)
        overlap = (
            (gb[:, None, 0] <= db[None, :, 2])
            & (db[None, :, 0] <= gb[:, None, 2])
            & (gb[:, None, 1] <= db[None, :, 3])
            & (db[None, :, 1] <= gb[:, None, 3])
        )  # (G_i, D_i); NaN bounds compare False: empty polygons overlap nothing
        g_idx, d_idx = np.nonzero(overlap)
        g_parts.append(g_idx + g0)
        d_parts.append(d_idx + d0)
        counts.append(len(g_idx))
    g_all = np.concatenate(g_parts) if g_parts else np.zeros(0, dtype=np.int64)  # (n,) chunk-global indices
    d_all = np.concatenate(d_parts) if d_parts else np.zeros(0, dtype=np.int64)  # (n,)
    if prune is not None and len(g_all):
        keep = ~_prunable(gt, det, g_all, d_all, prune)  # (n,)
        image = np.repeat(np.arange(len(counts)), counts)  # (n,) image of each pair
        g_all, d_all = g_all[keep], d_all[keep]
        counts = np.bincount(image[keep], minlength=len(counts)).tolist()
    areas = np.zeros(len(g_all))  # (n,)
    fast = gt.convex[g_all] & det.convex[d_all]  # (n,)
    if fast.any():
        # (n,) one code per (GT corners, det corners) pair: each group is clipped as one batch
        sizes = gt.sizes[g_all] * (FAST_MAX_POINTS + 1) + det.sizes[d_all]
        for code in np.unique(sizes[fast]):
            sel = np.flatnonzero(fast & (sizes == code))
            Pg, Pd = divmod(int(code), FAST_MAX_POINTS + 1)
            areas[sel] = _convex_intersection_area(gt.ring[g_all[sel], :Pg], det.ring[d_all[sel], :Pd])
    if (~fast).any():
        areas[~fast] = _geos_intersection_area(gt.geoms(g_all[~fast]), det.geoms(d_all[~fast]))
    out = []
    start = 0
    for i, n in enumerate(counts):
        G, D = gt_split[i + 1] - gt_split[i], det_split[i + 1] - det_split[i]
        inter = np.zeros((G, D))
        approx = np.zeros((G, D), dtype=bool)
        g_loc, d_loc = g_all[start : start + n] - gt_split[i], d_all[start : start + n] - det_split[i]
        inter[g_loc, d_loc] = areas[start : start + n]
        approx[g_loc, d_loc] = fast[start : start + n]
        out.append((inter, approx))
        start += n
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise (broadcast), 0 where den <= 0."""
    out = np.zeros(np.broadcast(num, den).shape)  # np.broadcast: C, unlike np.broadcast_shapes
    return np.divide(num, den, out=out, where=den > 0)


@dataclass
class _ImageGeometry:
    """Everything the matching needs of one image, computed once (the sweep re-thresholds only)."""

    gt: _Polygons
    det: _Polygons
    inter: np.ndarray  # (G, D) intersection areas
    approx: np.ndarray  # (G, D) bool: inter from numpy clipping (GEOS may differ in the last bits)
    gt_ignore: np.ndarray  # (G,) bool
    scores: np.ndarray  # (D,)

    def settle(self, near: np.ndarray) -> bool:
        """Recompute with GEOS the numpy pairs flagged (G, D) near a threshold; True when anything changed.

        A decision within SETTLE_TOL of a threshold is then exactly the one a plain shapely evaluation takes.
        """
        g, d = np.nonzero(near & self.approx)
        if g.size == 0:
            return False
        self.inter[g, d] = _geos_intersection_area(self.gt.geoms(g), self.det.geoms(d))
        self.approx[g, d] = False
        self.gt.settle_area(g)
        self.det.settle_area(d)
        return True


def _prepare_chunk(images: Sequence[PackedImage], prune_for: IoUProtocol | None = None) -> list[_ImageGeometry]:
    """The geometry of several images, computed together (numpy call overhead paid once per chunk).

    prune_for: the IoU protocol whose decisions alone are needed (no IoU matrix returned): see `_prunable`.
    """
    gt_split = np.cumsum([0] + [len(im.gt) for im in images])  # (I + 1,)
    det_split = np.cumsum([0] + [len(im.det) for im in images])  # (I + 1,)
    gt_polys = _Polygons(_concat([im.gt for im in images]))
    det_polys = _Polygons(_concat([im.det for im in images]))
    prune = None
    if prune_for is not None:
        ignore = [np.asarray(im.gt_ignore, dtype=bool).reshape(-1) for im in images]  # each (G_i,)
        prune = _Prune(prune_for.iou_thr, prune_for.dc_thr, np.concatenate(ignore) if ignore else np.zeros(0, bool))
    out = []
    for i, (inter, approx) in enumerate(_intersections(gt_polys, det_polys, gt_split, det_split, prune)):
        out.append(
            _ImageGeometry(
                gt=gt_polys.view(gt_split[i], gt_split[i + 1]),
                det=det_polys.view(det_split[i], det_split[i + 1]),
                inter=inter,
                approx=approx,
                gt_ignore=np.asarray(images[i].gt_ignore, dtype=bool).reshape(-1),  # (G_i,)
                scores=np.asarray(images[i].scores, dtype=np.float64).reshape(-1),  # (D_i,)
            )
        )
    return out


def _prepared(pairs: Iterable[ImageInput], prune_for: IoUProtocol | None = None) -> Iterator[_ImageGeometry]:
    """The geometry of every image, prepared CHUNK images at a time."""
    it = map(_packed, pairs)
    while chunk := list(itertools.islice(it, CHUNK)):
        yield from _prepare_chunk(chunk, prune_for)


# --------------------------------------------------------------------------------------------- results


def _hmean(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@dataclass
class ImageResult:
    """One image's outcome. Arrays are indexed like the ground truth / detections that were passed in."""

    gt_care: int  # ground truths that are not don't care
    det_care: int  # kept detections that are not don't care
    matched_gt: float  # recall credit (IoU: number of matches; DetEval: weighted)
    matched_det: float  # precision credit (IoU: number of matches; DetEval: weighted)
    gt_dontcare: np.ndarray  # (G,) bool
    gt_matched: np.ndarray  # (G,) bool
    det_kept: np.ndarray  # (D,) bool: score >= the threshold in force
    det_dontcare: np.ndarray  # (D,) bool
    det_matched: np.ndarray  # (D,) bool
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (gt index, det index) of every match
    iou: np.ndarray | None = None  # (G, D) IoU matrix (IoU protocol only)

    @property
    def recall(self) -> float:
        """Per-image, informational, as the RRC script: 1 when the image has no care GT."""
        return 1.0 if self.gt_care == 0 else self.matched_gt / self.gt_care

    @property
    def precision(self) -> float:
        """Per-image, informational, as the RRC script: 1 when there is neither care GT nor care det."""
        if self.det_care == 0:
            return 1.0 if self.gt_care == 0 else 0.0
        return self.matched_det / self.det_care

    @property
    def hmean(self) -> float:
        return _hmean(self.precision, self.recall)


@dataclass
class EvalResult:
    """Dataset-level scores from global sums (not a mean of per-image scores)."""

    precision: float
    recall: float
    hmean: float
    per_image: list[ImageResult]
    counts: dict[str, float]  # images, gt_care, det_care, matched_gt, matched_det
    protocol: Protocol


@dataclass
class SweepRow:
    threshold: float
    precision: float
    recall: float
    hmean: float
    counts: dict[str, float]


@dataclass
class SweepResult:
    rows: list[SweepRow]
    best_threshold: float
    best_hmean: float
    protocol: Protocol
    note: str = SWEEP_NOTE

    @property
    def best(self) -> SweepRow:
        return next(r for r in self.rows if r.threshold == self.best_threshold)


# --------------------------------------------------------------------------------------------- matching


def _iou(geo: _ImageGeometry) -> np.ndarray:
    """(G, D) inter / (area_G + area_D - inter), 0 where the union is 0."""
    return _ratio(geo.inter, geo.gt.area[:, None] + geo.det.area[None, :] - geo.inter)


def _area_recall(geo: _ImageGeometry) -> np.ndarray:
    """(G, D) inter / area_G."""
    return _ratio(geo.inter, geo.gt.area[:, None])


def _area_precision(geo: _ImageGeometry) -> np.ndarray:
    """(G, D) inter / area_D."""
    return _ratio(geo.inter, geo.det.area[None, :])


def _settled(geo: _ImageGeometry, ratio: Callable[[_ImageGeometry], np.ndarray], thr: float) -> np.ndarray:
    """ratio(geo) (G, D), after GEOS has recomputed the numpy pairs within SETTLE_TOL of thr."""
    values = ratio(geo)
    return ratio(geo) if geo.settle(np.abs(values - thr) <= SETTLE_TOL) else values


def _dontcare_dets(geo: _ImageGeometry, keep: np.ndarray, dc_thr: float) -> np.ndarray:
    """(D,) bool: kept detections covered more than dc_thr by some don't-care GT (by their own area)."""
    if not geo.gt_ignore.any():
        return np.zeros_like(keep)
    rows = geo.gt_ignore  # (G,)
    covered = _ratio(geo.inter[rows], geo.det.area[None, :])  # (G_dc, D) inter / area(D)
    near = np.zeros(geo.inter.shape, dtype=bool)  # (G, D)
    near[rows] = np.abs(covered - dc_thr) <= SETTLE_TOL
    if geo.settle(near):
        covered = _ratio(geo.inter[rows], geo.det.area[None, :])
    return keep & (covered > dc_thr).any(axis=0)


def _match_iou(geo: _ImageGeometry, keep: np.ndarray, p: IoUProtocol) -> ImageResult:
    G, D = geo.inter.shape
    det_dc = _dontcare_dets(geo, keep, p.dc_thr)  # (D,)
    det_care = keep & ~det_dc  # (D,)
    iou = _settled(geo, _iou, p.iou_thr)  # (G, D)
    candidate = (iou > p.iou_thr) & ~geo.gt_ignore[:, None] & det_care[None, :]  # (G, D)
    gt_matched = np.zeros(G, dtype=bool)
    det_matched = np.zeros(D, dtype=bool)
    pairs: list[tuple[int, int]] = []
    for g, d in zip(*(ix.tolist() for ix in np.nonzero(candidate)), strict=True):  # GT-major, dets in order
        if not (gt_matched[g] or det_matched[d]):
            gt_matched[g] = det_matched[d] = True
            pairs.append((g, d))
    return ImageResult(
        gt_care=int((~geo.gt_ignore).sum()),
        det_care=int(det_care.sum()),
        matched_gt=float(len(pairs)),
        matched_det=float(len(pairs)),
        gt_dontcare=geo.gt_ignore.copy(),
        gt_matched=gt_matched,
        det_kept=keep.copy(),
        det_dontcare=det_dc,
        det_matched=det_matched,
        pairs=pairs,
        iou=iou,
    )


def _centre_ok(geo: _ImageGeometry, thr: float) -> np.ndarray:
    """(G, D) bool: 2 * |c_G - c_D| / (diag_G + diag_D) < thr, with bounding-box centres and diagonals."""
    gb, db = geo.gt.bounds, geo.det.bounds  # (G, 4), (D, 4)
    gc = (gb[:, :2] + gb[:, 2:]) / 2  # (G, 2)
    dc = (db[:, :2] + db[:, 2:]) / 2  # (D, 2)
    gdiag = np.hypot(*(gb[:, 2:] - gb[:, :2]).T)  # (G,)
    ddiag = np.hypot(*(db[:, 2:] - db[:, :2]).T)  # (D,)
    dist = np.linalg.norm(gc[:, None, :] - dc[None, :, :], axis=-1)  # (G, D)
    with np.errstate(invalid="ignore"):
        norm = _ratio(2 * dist, gdiag[:, None] + ddiag[None, :])  # (G, D); 0 for degenerate, masked below
    return (norm < thr) & (gdiag[:, None] + ddiag[None, :] > 0)


def _match_deteval(geo: _ImageGeometry, keep: np.ndarray, p: DetEvalProtocol) -> ImageResult:
    G, D = geo.inter.shape
    det_dc = _dontcare_dets(geo, keep, p.dc_thr)  # (D,)
    det_care = keep & ~det_dc  # (D,)
    gt_care = ~geo.gt_ignore  # (G,)
    _settled(geo, _area_recall, p.tr)  # settles the pairs near tr; the sums below are not settled
    r = _area_recall(geo)  # (G, D)
    prec = _settled(geo, _area_precision, p.tp)  # (G, D)
    gt_hit = np.zeros(G, dtype=bool)
    det_hit = np.zeros(D, dtype=bool)
    recall_acc = precision_acc = 0.0
    pairs: list[tuple[int, int]] = []

    # one-to-one: exactly one strong partner on both sides (counted over every kept det / every GT, as mmocr)
    strong = (r > p.tr) & (prec > p.tp) & keep[None, :]  # (G, D)
    unique = strong & (strong.sum(axis=1) == 1)[:, None] & (strong.sum(axis=0) == 1)[None, :]  # (G, D)
    one2one = unique & _centre_ok(geo, p.center_thr) & gt_care[:, None] & det_care[None, :]  # disjoint pairs
    for g, d in zip(*np.nonzero(one2one), strict=True):
        gt_hit[g] = det_hit[d] = True
        recall_acc += p.one2one
        precision_acc += p.one2one
        pairs.append((int(g), int(d)))

    # one-to-many: an unmatched care GT split over several unmatched care detections
    for g in np.flatnonzero(gt_care & ~gt_hit):
        parts = np.flatnonzero(det_care & ~det_hit & (prec[g] >= p.tp))
        if len(parts) >= p.min_many and r[g, parts].sum() >= p.tr:
            gt_hit[g] = True
            det_hit[parts] = True
            recall_acc += p.one2many
            precision_acc += p.one2many * len(parts)
            pairs.extend((int(g), int(d)) for d in parts)

    # many-to-one: an unmatched care detection covering several unmatched care GTs
    for d in np.flatnonzero(det_care & ~det_hit):
        parts = np.flatnonzero(gt_care & ~gt_hit & (r[:, d] >= p.tr))
        if len(parts) >= p.min_many and prec[parts, d].sum() >= p.tp:
            det_hit[d] = True
            gt_hit[parts] = True
            recall_acc += p.many2one * len(parts)
            precision_acc += p.many2one
            pairs.extend((int(g), int(d)) for g in parts)

    return ImageResult(
        gt_care=int(gt_care.sum()),
        det_care=int(det_care.sum()),
        matched_gt=recall_acc,
        matched_det=precision_acc,
        gt_dontcare=geo.gt_ignore.copy(),
        gt_matched=gt_hit,
        det_kept=keep.copy(),
        det_dontcare=det_dc,
        det_matched=det_hit,
        pairs=sorted(pairs),
    )


def _match(geo: _ImageGeometry, protocol: Protocol, min_score: float) -> ImageResult:
    keep = geo.scores >= min_score  # (D,)
    match protocol:
        case IoUProtocol():
            return _match_iou(geo, keep, protocol)
        case DetEvalProtocol():
            return _match_deteval(geo, keep, protocol)
        case _:
            raise TypeError(f"not an evaluation protocol: {protocol!r}")


# --------------------------------------------------------------------------------------------- public API


def evaluate_image(
    gt: Sequence[Instance],
    dets: Sequence[Detection],
    protocol: str | Protocol = "iou",
    min_score: float = 0.0,  # keep every detection unless asked: the RRC script applies no threshold
) -> ImageResult:
    """Match one image's detections (those with score >= min_score) to its ground truth."""
    return _match(_prepare_chunk([PackedImage.of(gt, dets)])[0], resolve_protocol(protocol), min_score)


def _add(counts: dict[str, float], res: ImageResult) -> None:
    counts["images"] += 1
    counts["gt_care"] += res.gt_care
    counts["det_care"] += res.det_care
    counts["matched_gt"] += res.matched_gt
    counts["matched_det"] += res.matched_det


def _totals(results: Iterable[ImageResult]) -> dict[str, float]:
    counts: dict[str, float] = {
        "images": 0,
        "gt_care": 0,
        "det_care": 0,
        "matched_gt": 0.0,
        "matched_det": 0.0,
    }
    for res in results:
        _add(counts, res)
    return counts


def _scores(counts: dict[str, float]) -> tuple[float, float, float]:
    """(precision, recall, hmean) from global sums; 0 where a denominator is 0."""
    recall = counts["matched_gt"] / counts["gt_care"] if counts["gt_care"] else 0.0
    precision = counts["matched_det"] / counts["det_care"] if counts["det_care"] else 0.0
    return precision, recall, _hmean(precision, recall)


def evaluate(
    pairs: Iterable[ImageInput],
    protocol: str | Protocol = "iou",
    min_score: float = 0.0,  # keep every detection unless asked: the RRC script applies no threshold
    keep_iou: bool = True,  # per-image (G, D) IoU matrices in the results; False saves 8 x G x D bytes each
) -> EvalResult:
    """Dataset scores over (ground truth, detections) pairs or PackedImage objects, one per image."""
    proto = resolve_protocol(protocol)
    per_image = []
    # without IoU matrices to return, pairs that cannot change an IoU-protocol decision are skipped
    prune_for = proto if isinstance(proto, IoUProtocol) and not keep_iou else None
    for geo in _prepared(pairs, prune_for):
        res = _match(geo, proto, min_score)
        if not keep_iou:
            res.iou = None
        per_image.append(res)
    counts = _totals(per_image)
    precision, recall, hmean = _scores(counts)
    return EvalResult(precision, recall, hmean, per_image, counts, proto)


def threshold_sweep(
    pairs: Iterable[ImageInput],
    thresholds: Sequence[float] = THRESHOLDS,
    protocol: str | Protocol = "iou",
) -> SweepResult:
    """Scores at every threshold (keep score >= thr); best hmean and its threshold (lowest on ties).

    Intersections are computed once per image; each threshold only re-runs the matching.
    """
    proto = resolve_protocol(protocol)
    thrs = sorted(float(t) for t in thresholds)
    if not thrs:
        raise ValueError("threshold_sweep needs at least one threshold")
    totals = [_totals([]) for _ in thrs]  # running global sums, one per threshold
    for geo in _prepared(pairs):
        for i, thr in enumerate(thrs):
            _add(totals[i], _match(geo, proto, thr))
    rows = [SweepRow(thr, *_scores(counts), counts=counts) for thr, counts in zip(thrs, totals, strict=True)]
    best = max(rows, key=lambda row: row.hmean)  # max returns the first maximum: the lowest threshold on ties
    return SweepResult(rows, best.threshold, best.hmean, proto)
