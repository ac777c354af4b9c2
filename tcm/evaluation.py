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
  order. (RRC keeps Polygon2's signed area, DB drops invalid polygons, mmocr uses `buffer(0)`, which keeps
  one lobe depending on the order.);
- what is still empty after that (collinear or repeated points) has area 0: IoU 0 with everything, never
  matched and never don't care; a zero-area care detection still counts as a (false) detection and a
  zero-area care GT as a (missed) ground truth, as the RRC script counts them.

Speed: all intersection areas of an image come from one vectorised shapely call on the pairs whose bounding
boxes overlap; the sweep computes them once per image and only re-thresholds (mmocr issue #847).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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


def clockwise(points: np.ndarray) -> np.ndarray:
    """Points (P, 2) in the RRC's clockwise order (image coordinates, y down): reversed when counter-clockwise.

    The RRC test: sum over edges of (x_{i+1} - x_i) * (y_{i+1} + y_i) <= 0 means clockwise.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)  # (P, 2)
    nxt = np.roll(pts, -1, axis=0)  # (P, 2) the next corner of every edge
    edge_sum = float(np.sum((nxt[:, 0] - pts[:, 0]) * (nxt[:, 1] + pts[:, 1])))
    return pts if edge_sum <= 0 else pts[::-1].copy()


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


def _intersections(gt_geoms: np.ndarray, det_geoms: np.ndarray) -> np.ndarray:
    """Intersection areas (G, D); only bounding-box-overlapping pairs are handed to GEOS, in one call."""
    G, D = len(gt_geoms), len(det_geoms)
    inter = np.zeros((G, D), dtype=np.float64)
    if G == 0 or D == 0:
        return inter
    gb = shapely.bounds(gt_geoms)  # (G, 4) xmin, ymin, xmax, ymax; NaN for empty geometries
    db = shapely.bounds(det_geoms)  # (D, 4)
    overlap = (
        (gb[:, None, 0] <= db[None, :, 2])
        & (db[None, :, 0] <= gb[:, None, 2])
        & (gb[:, None, 1] <= db[None, :, 3])
        & (db[None, :, 1] <= gb[:, None, 3])
    )  # (G, D); NaN comparisons are False, so empty geometries never overlap
    g_idx, d_idx = np.nonzero(overlap)  # (n,), (n,)
    if g_idx.size == 0:
        return inter
    try:
        areas = shapely.area(shapely.intersection(gt_geoms[g_idx], det_geoms[d_idx]))  # (n,)
    except GEOSException:
        # a topology failure somewhere: redo per pair, 0 for the failing ones (RRC: exception -> 0)
        pairs = zip(g_idx, d_idx, strict=True)
        areas = np.array([_safe_intersection_area(gt_geoms[g], det_geoms[d]) for g, d in pairs])
    inter[g_idx, d_idx] = areas
    return inter


def _safe_intersection_area(a: shapely.Geometry, b: shapely.Geometry) -> float:
    try:
        return float(a.intersection(b).area)
    except GEOSException:
        return 0.0


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise (broadcast), 0 where den <= 0."""
    num, den = np.broadcast_arrays(num, den)
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den > 0)


@dataclass
class _ImageGeometry:
    """Everything the matching needs of one image, computed once (the sweep re-thresholds only)."""

    gt_area: np.ndarray  # (G,)
    det_area: np.ndarray  # (D,)
    inter: np.ndarray  # (G, D)
    gt_ignore: np.ndarray  # (G,) bool
    scores: np.ndarray  # (D,)
    gt_bounds: np.ndarray  # (G, 4)
    det_bounds: np.ndarray  # (D, 4)


def _prepare(gt: Sequence[Instance], dets: Sequence[Detection]) -> _ImageGeometry:
    gt_geoms = to_geometries([g.points for g in gt])  # (G,)
    det_geoms = to_geometries([d.points for d in dets])  # (D,)
    return _ImageGeometry(
        gt_area=shapely.area(gt_geoms).astype(np.float64).reshape(-1),
        det_area=shapely.area(det_geoms).astype(np.float64).reshape(-1),
        inter=_intersections(gt_geoms, det_geoms),
        gt_ignore=np.array([bool(g.ignore) for g in gt], dtype=bool).reshape(-1),
        scores=np.array([float(d.score) for d in dets], dtype=np.float64).reshape(-1),
        gt_bounds=shapely.bounds(gt_geoms).reshape(-1, 4),
        det_bounds=shapely.bounds(det_geoms).reshape(-1, 4),
    )


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


def _dontcare_dets(geo: _ImageGeometry, keep: np.ndarray, dc_thr: float) -> np.ndarray:
    """(D,) bool: kept detections covered more than dc_thr by some don't-care GT (by their own area)."""
    if not geo.gt_ignore.any():
        return np.zeros_like(keep)
    covered = _ratio(geo.inter[geo.gt_ignore], geo.det_area[None, :])  # (G_dc, D) inter / area(D)
    return keep & (covered > dc_thr).any(axis=0)


def _match_iou(geo: _ImageGeometry, keep: np.ndarray, p: IoUProtocol) -> ImageResult:
    G, D = geo.inter.shape
    det_dc = _dontcare_dets(geo, keep, p.dc_thr)  # (D,)
    det_care = keep & ~det_dc  # (D,)
    iou = _ratio(geo.inter, geo.gt_area[:, None] + geo.det_area[None, :] - geo.inter)  # (G, D)
    candidate = (iou > p.iou_thr) & ~geo.gt_ignore[:, None] & det_care[None, :]  # (G, D)
    gt_matched = np.zeros(G, dtype=bool)
    det_matched = np.zeros(D, dtype=bool)
    pairs: list[tuple[int, int]] = []
    for g in np.flatnonzero(candidate.any(axis=1)):  # GT-major: GTs in order ...
        free = np.flatnonzero(candidate[g] & ~det_matched)  # ... the first unmatched det in order
        if free.size:
            d = int(free[0])
            gt_matched[g] = det_matched[d] = True
            pairs.append((int(g), d))
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
    gc = (geo.gt_bounds[:, :2] + geo.gt_bounds[:, 2:]) / 2  # (G, 2)
    dc = (geo.det_bounds[:, :2] + geo.det_bounds[:, 2:]) / 2  # (D, 2)
    gdiag = np.hypot(*(geo.gt_bounds[:, 2:] - geo.gt_bounds[:, :2]).T)  # (G,)
    ddiag = np.hypot(*(geo.det_bounds[:, 2:] - geo.det_bounds[:, :2]).T)  # (D,)
    dist = np.linalg.norm(gc[:, None, :] - dc[None, :, :], axis=-1)  # (G, D)
    with np.errstate(invalid="ignore"):
        norm = _ratio(2 * dist, gdiag[:, None] + ddiag[None, :])  # (G, D); 0 for degenerate, masked below
    return (norm < thr) & (gdiag[:, None] + ddiag[None, :] > 0)


def _match_deteval(geo: _ImageGeometry, keep: np.ndarray, p: DetEvalProtocol) -> ImageResult:
    G, D = geo.inter.shape
    det_dc = _dontcare_dets(geo, keep, p.dc_thr)  # (D,)
    det_care = keep & ~det_dc  # (D,)
    gt_care = ~geo.gt_ignore  # (G,)
    r = _ratio(geo.inter, geo.gt_area[:, None])  # (G, D) area recall
    prec = _ratio(geo.inter, geo.det_area[None, :])  # (G, D) area precision
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
    return _match(_prepare(gt, dets), resolve_protocol(protocol), min_score)


def _add(counts: dict[str, float], res: ImageResult) -> None:
    counts["images"] += 1
    counts["gt_care"] += res.gt_care
    counts["det_care"] += res.det_care
    counts["matched_gt"] += res.matched_gt
    counts["matched_det"] += res.matched_det


def _totals(results: Iterable[ImageResult]) -> dict[str, float]:
    counts = {"images": 0.0, "gt_care": 0.0, "det_care": 0.0, "matched_gt": 0.0, "matched_det": 0.0}
    for res in results:
        _add(counts, res)
    return counts


def _scores(counts: dict[str, float]) -> tuple[float, float, float]:
    """(precision, recall, hmean) from global sums; 0 where a denominator is 0."""
    recall = counts["matched_gt"] / counts["gt_care"] if counts["gt_care"] else 0.0
    precision = counts["matched_det"] / counts["det_care"] if counts["det_care"] else 0.0
    return precision, recall, _hmean(precision, recall)


def evaluate(
    pairs: Iterable[tuple[Sequence[Instance], Sequence[Detection]]],
    protocol: str | Protocol = "iou",
    min_score: float = 0.0,  # keep every detection unless asked: the RRC script applies no threshold
) -> EvalResult:
    """Dataset scores over (ground truth, detections) pairs, one pair per image."""
    proto = resolve_protocol(protocol)
    per_image = [evaluate_image(gt, dets, proto, min_score) for gt, dets in pairs]
    counts = _totals(per_image)
    precision, recall, hmean = _scores(counts)
    return EvalResult(precision, recall, hmean, per_image, counts, proto)


def threshold_sweep(
    pairs: Iterable[tuple[Sequence[Instance], Sequence[Detection]]],
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
    for gt, dets in pairs:
        geo = _prepare(gt, dets)
        for i, thr in enumerate(thrs):
            _add(totals[i], _match(geo, proto, thr))
    rows = [SweepRow(thr, *_scores(counts), counts=counts) for thr, counts in zip(thrs, totals, strict=True)]
    best = max(rows, key=lambda row: row.hmean)  # max returns the first maximum: the lowest threshold on ties
    return SweepResult(rows, best.threshold, best.hmean, proto)
