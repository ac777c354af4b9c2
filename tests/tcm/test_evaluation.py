"""tcm.evaluation: hand-made cases with known answers, the real IC15 fixture, DetEval, the sweep."""

from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np
import pytest
import shapely

import tcm.evaluation as ev
from tcm.evaluation import (
    THRESHOLDS,
    DetEvalProtocol,
    IoUProtocol,
    clockwise,
    evaluate,
    evaluate_image,
    resolve_protocol,
    threshold_sweep,
    to_geometries,
)
from tcm.types import Detection, Instance

FIXTURE = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "icdar2015"


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Axis-aligned box, clockwise on screen (TL, TR, BR, BL) as IC15 writes it. (4, 2)"""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def gt(*boxes: np.ndarray, ignore: tuple[int, ...] = ()) -> list[Instance]:
    return [Instance(b, ignore=i in ignore) for i, b in enumerate(boxes)]


def dets(*boxes: np.ndarray, scores: tuple[float, ...] | None = None) -> list[Detection]:
    scores = scores or (1.0,) * len(boxes)
    return [Detection(b, s) for b, s in zip(boxes, scores, strict=True)]


def shapely_iou(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = shapely.Polygon(a), shapely.Polygon(b)
    inter = pa.intersection(pb).area
    return inter / (pa.area + pb.area - inter)


# ------------------------------------------------------------------------------------- IoU protocol


def test_exact_match_in_either_orientation() -> None:
    boxes = [rect(0, 0, 100, 20), rect(0, 50, 60, 70)]
    for order in (lambda b: b, lambda b: b[::-1]):  # clockwise and counter-clockwise detections
        res = evaluate([(gt(*boxes), dets(*[order(b) for b in boxes]))])
        assert (res.precision, res.recall, res.hmean) == (1.0, 1.0, 1.0)
        assert res.per_image[0].pairs == [(0, 0), (1, 1)]


@pytest.mark.parametrize("target, matched", [(0.51, True), (0.49, False)])
def test_iou_just_above_and_below_half(target: float, matched: bool) -> None:
    # GT 100 x 10; the detection is the GT shifted right by s: IoU = (100 - s) / (100 + s) -> s = 100 (1 - i) / (1 + i)
    s = 100 * (1 - target) / (1 + target)
    res = evaluate_image(gt(rect(0, 0, 100, 10)), dets(rect(s, 0, 100 + s, 10)))
    assert res.iou[0, 0] == pytest.approx(target, abs=1e-12)
    assert res.matched_gt == (1.0 if matched else 0.0)
    assert res.det_care == 1 and res.gt_care == 1


def test_iou_exactly_half_is_not_a_match() -> None:
    axis = evaluate_image(gt(rect(0, 0, 2, 1)), dets(rect(0, 0, 1, 1)))  # 1 / 2
    diamond = np.array([[1, 0], [2, 1], [1, 2], [0, 1]], dtype=np.float64)  # area 2, rotated 45 degrees
    half = np.array([[1, 0], [2, 1], [0, 1]], dtype=np.float64)  # its upper triangle, area 1
    rotated = evaluate_image(gt(diamond), dets(half))
    for res in (axis, rotated):
        assert res.iou[0, 0] == 0.5
        assert res.matched_gt == 0.0  # the RRC needs IoU > 0.5, strictly


def test_greedy_is_gt_major_first_come_not_maximum_matching() -> None:
    # det0 [1, 11] overlaps GT0 [0, 10] and GT1 [2, 12] with IoU 9/11 each; det1 [-3, 7] overlaps GT0 with 7/13 and
    # GT1 with 5/15. GT0 takes det0 (the first det in order), GT1 then has nothing above 0.5: 1 match (a maximum
    # matching would find 2: GT0-det1, GT1-det0).
    res = evaluate_image(
        gt(rect(0, 0, 10, 10), rect(2, 0, 12, 10)), dets(rect(1, 0, 11, 10), rect(-3, 0, 7, 10))
    )
    assert res.pairs == [(0, 0)]
    assert res.matched_gt == 1.0 and res.det_care == 2


def test_split_and_merged_detections_score_nothing_with_iou() -> None:
    halves = dets(rect(0, 0, 50, 20), rect(50, 0, 100, 20))  # IoU 0.5 each with the whole
    split = evaluate([(gt(rect(0, 0, 100, 20)), halves)])
    assert (split.counts["matched_gt"], split.counts["det_care"], split.precision, split.recall) == (
        0,
        2,
        0,
        0,
    )
    merged = evaluate([(gt(rect(0, 0, 50, 20), rect(50, 0, 100, 20)), dets(rect(0, 0, 100, 20)))])
    assert (merged.counts["matched_gt"], merged.counts["gt_care"], merged.hmean) == (0, 2, 0.0)


@pytest.mark.parametrize("x0, dont_care", [(49, True), (50, False), (51, False)])
def test_dont_care_overlap_threshold(x0: int, dont_care: bool) -> None:
    # DC GT [0, 100] x [0, 10]; the detection [x0, x0 + 100] lies (100 - x0) % inside it: > 0.5 -> don't care
    # (exactly 0.5 is not). A care GT far away is matched, so P = 1/1 when the detection is set aside, else 1/2.
    truth = gt(rect(0, 0, 100, 10), rect(500, 500, 600, 520), ignore=(0,))
    res = evaluate([(truth, dets(rect(x0, 0, x0 + 100, 10), rect(500, 500, 600, 520)))])
    assert res.per_image[0].det_dontcare.tolist() == [dont_care, False]
    assert res.counts["det_care"] == (1 if dont_care else 2)
    assert res.precision == (1.0 if dont_care else 0.5)
    assert res.recall == 1.0  # the DC GT never counts


def test_dont_care_gt_is_never_matched() -> None:
    res = evaluate_image(gt(rect(0, 0, 10, 10), ignore=(0,)), dets(rect(0, 0, 10, 10)))
    assert (res.gt_care, res.det_care, res.matched_gt, res.pairs) == (0, 0, 0.0, [])


def test_empty_images_give_zeros_not_errors() -> None:
    nothing = evaluate([])
    assert (nothing.precision, nothing.recall, nothing.hmean) == (0.0, 0.0, 0.0)
    blank = evaluate([([], []), ([], [])])
    assert blank.counts["images"] == 2 and blank.hmean == 0.0
    assert (
        blank.per_image[0].recall == 1.0 and blank.per_image[0].precision == 1.0
    )  # RRC per-image convention
    only_gt = evaluate([(gt(rect(0, 0, 10, 10)), [])])
    assert (only_gt.precision, only_gt.recall, only_gt.counts["gt_care"]) == (0.0, 0.0, 1)
    only_det = evaluate([([], dets(rect(0, 0, 10, 10)))])
    assert (only_det.precision, only_det.recall, only_det.counts["det_care"]) == (0.0, 0.0, 1)
    assert only_det.per_image[0].precision == 0.0 and only_det.per_image[0].recall == 1.0


def test_dataset_totals_are_global_sums_not_means() -> None:
    # image A: 1 of 1 matched; image B: 0 of 3 matched, 1 det. Mean of per-image recalls = 0.5; global = 1/4.
    a = (gt(rect(0, 0, 10, 10)), dets(rect(0, 0, 10, 10)))
    b = (gt(rect(0, 0, 10, 10), rect(20, 0, 30, 10), rect(40, 0, 50, 10)), dets(rect(100, 100, 110, 110)))
    res = evaluate([a, b])
    assert res.recall == 0.25 and res.precision == 0.5
    assert res.hmean == pytest.approx(2 * 0.25 * 0.5 / 0.75)


# ------------------------------------------------------------------------------------- polygons


def rrc_edge_sum(points: np.ndarray) -> float:
    """The RRC's `validate_clockwise_points` sum: <= 0 means clockwise in image coordinates."""
    nxt = np.roll(points, -1, axis=0)
    return float(np.sum((nxt[:, 0] - points[:, 0]) * (nxt[:, 1] + points[:, 1])))


def test_counter_clockwise_points_are_normalised_for_files() -> None:
    cw = rect(0, 0, 4, 2)  # TL, TR, BR, BL
    assert rrc_edge_sum(cw) <= 0 and np.array_equal(clockwise(cw), cw)
    ccw = cw[[0, 3, 2, 1]]  # TL, BL, BR, TR
    assert rrc_edge_sum(ccw) > 0
    assert np.array_equal(clockwise(ccw), cw)  # reversed, first corner kept
    hexagon = np.array([[0, 5], [3, 0], [8, 0], [11, 5], [8, 10], [3, 10]], dtype=np.float64)[::-1]
    assert rrc_edge_sum(hexagon) > 0 and rrc_edge_sum(clockwise(hexagon)) <= 0


def test_bow_tie_is_its_two_lobes_whatever_the_order() -> None:
    bow = np.array([[0, 0], [2, 2], [2, 0], [0, 2]], dtype=np.float64)  # self-intersecting at (1, 1)
    variants = [bow, bow[::-1], np.roll(bow, 1, axis=0), np.roll(bow[::-1], 3, axis=0)]
    areas = shapely.area(to_geometries(variants))
    assert np.all(areas == 2.0)  # two triangles of area 1 (shapely's raw area of this ring is 0)
    for v in variants:
        vs_square = evaluate_image(gt(rect(0, 0, 2, 2)), dets(v))  # inter 2, union 4
        assert vs_square.iou[0, 0] == 0.5 and vs_square.matched_gt == 0.0
        vs_itself = evaluate_image(gt(bow), dets(v))
        assert vs_itself.iou[0, 0] == 1.0 and vs_itself.matched_gt == 1.0


def test_degenerate_polygons_have_zero_area_and_still_count() -> None:
    line = np.array([[10, 10], [20, 20], [30, 30], [40, 40]], dtype=np.float64)  # collinear
    two_points = np.array([[0, 0], [5, 5]], dtype=np.float64)
    nan = rect(0, 0, 5, 5)
    nan[2, 0] = np.nan
    closed_pair = np.array([[0, 0], [5, 5], [0, 0]], dtype=np.float64)  # 3 points, first == last: no ring
    assert shapely.area(to_geometries([line, two_points, nan, closed_pair])).tolist() == [0.0] * 4
    # all three inside a DC region: area 0 -> coverage 0 -> not don't care; counted as (false) detections
    truth = gt(rect(0, 0, 50, 50), rect(100, 100, 120, 120), ignore=(0,))
    res = evaluate_image(truth, dets(line, two_points, nan, rect(100, 100, 120, 120)))
    assert res.det_dontcare.tolist() == [False] * 4
    assert (res.det_care, res.matched_gt, res.pairs) == (4, 1.0, [(1, 3)])
    zero_gt = evaluate_image(gt(line), dets(line))
    assert (zero_gt.gt_care, zero_gt.matched_gt) == (1, 0.0)  # a zero-area GT is counted and missed


def test_arbitrary_polygons_match_shapely() -> None:
    # a U-shaped (non-convex) region, a 24-gon (beyond the numpy fast path) and a dart quad, against shifted copies
    u = np.array(
        [[0, 0], [30, 0], [30, 30], [20, 30], [20, 10], [10, 10], [10, 30], [0, 30]], dtype=np.float64
    )
    ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    circle = np.stack([50 + 20 * np.cos(ang), 50 + 20 * np.sin(ang)], axis=1)
    dart = np.array([[0, 0], [10, 4], [20, 0], [10, 12]], dtype=np.float64)
    shapes = [u, circle, dart]
    shifted = [s + [3.0, 1.5] for s in shapes]
    res = evaluate_image(gt(*shapes), dets(*shifted))
    for i in range(3):
        for j in range(3):
            expected = (
                shapely_iou(shapes[i], shifted[j])
                if shapely.Polygon(shapes[i]).intersects(shapely.Polygon(shifted[j]))
                else 0.0
            )
            assert res.iou[i, j] == pytest.approx(expected, abs=1e-12)


def test_convex_fast_path_agrees_with_shapely() -> None:
    rng = np.random.default_rng(7)
    truth, preds = [], []
    for _ in range(60):  # random convex polygons of 3..6 corners, either orientation, some on an integer grid
        for out in (truth, preds):
            n = int(rng.integers(3, 7))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            r = rng.uniform(5, 15)
            pts = np.stack([20 + r * np.cos(ang), 20 + r * np.sin(ang)], axis=1) + rng.uniform(-5, 5, 2)
            if rng.random() < 0.5:
                pts = np.rint(pts)
            out.append(pts if rng.random() < 0.5 else pts[::-1])
    res = evaluate_image([Instance(p) for p in truth], [Detection(p) for p in preds])
    gp, dp = to_geometries(truth), to_geometries(preds)
    inter = shapely.area(shapely.intersection(gp[:, None], dp[None, :]))  # (G, D)
    union = shapely.area(gp)[:, None] + shapely.area(dp)[None, :] - inter
    assert np.allclose(res.iou, inter / union, rtol=0, atol=1e-12)
    # grid rectangles sharing edges (same and opposite directions), contained, touching: exact
    boxes = [rect(0, 0, 4, 2), rect(2, 0, 6, 2), rect(4, 0, 8, 2), rect(1, 0, 3, 2), rect(0, 2, 4, 4)]
    grid = evaluate_image(gt(*boxes), dets(*[np.roll(b[::-1], 1, axis=0) for b in boxes]))
    expected = np.array([[shapely_iou(a, b) for b in boxes] for a in boxes])
    assert np.array_equal(grid.iou, expected)


def test_decisions_near_the_threshold_follow_shapely() -> None:
    # a rectangle and its half, rotated and moved: IoU is 0.5 up to rounding, and numpy clipping and GEOS round
    # differently in about one case in five; the match decision must always be the one plain shapely takes
    rng = np.random.default_rng(0)
    truth, preds = [], []
    for _ in range(40):
        theta, offset, size = rng.uniform(0, 1.5), rng.uniform(0, 1000, 2), rng.uniform(1, 200)
        rot = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
        truth.append(rect(0, 0, size, size) @ rot + offset)
        preds.append(rect(0, 0, size, size / 2) @ rot + offset)
    res = evaluate([(gt(t), dets(p)) for t, p in zip(truth, preds, strict=True)])
    expected = [float(shapely_iou(t, p) > 0.5) for t, p in zip(truth, preds, strict=True)]
    assert 0 < sum(expected) < len(expected)  # both sides of the threshold occur
    assert [r.matched_gt for r in res.per_image] == expected


# ------------------------------------------------------------------------------------- DetEval


def test_deteval_split_gets_one_to_many_credit() -> None:
    halves = dets(rect(0, 0, 50, 20), rect(50, 0, 100, 20))  # r = 0.5 each (sum 1.0 >= 0.8), p = 1.0 each
    res = evaluate([(gt(rect(0, 0, 100, 20)), halves)], protocol="deteval")
    assert res.counts["matched_gt"] == pytest.approx(0.8)  # recall side 0.8
    assert res.counts["matched_det"] == pytest.approx(1.6)  # precision side 0.8 x 2 detections
    assert res.recall == pytest.approx(0.8) and res.precision == pytest.approx(0.8)


def test_deteval_merged_box_is_many_to_one() -> None:
    truth = gt(rect(0, 0, 50, 20), rect(50, 0, 100, 20))
    one_box = dets(rect(0, 0, 100, 20))  # r = 1.0 for both GTs, p = 0.5 each (sum 1.0 >= 0.4)
    res = evaluate([(truth, one_box)], protocol="deteval")
    assert (res.recall, res.precision) == (1.0, 1.0)
    # mmocr's literal order (min_many=1): the first GT takes the box one-to-many with credit 0.8
    mm = evaluate([(truth, one_box)], protocol=DetEvalProtocol(min_many=1))
    assert mm.recall == pytest.approx(0.4) and mm.precision == pytest.approx(0.8)


def test_deteval_one_to_one_and_thresholds() -> None:
    assert evaluate([(gt(rect(0, 0, 100, 20)), dets(rect(0, 0, 100, 20)))], protocol="deteval").hmean == 1.0
    # covers 75 % of the GT with nothing outside: r = 0.75, p = 1.0 -> IC13 (tr 0.8) no match, Total-Text (0.7) match
    case = [(gt(rect(0, 0, 100, 20)), dets(rect(0, 0, 75, 20)))]
    assert evaluate(case, protocol="deteval").hmean == 0.0
    assert evaluate(case, protocol=DetEvalProtocol(tr=0.7, tp=0.6)).hmean == 1.0
    # the centre rule: a thin det at the GT's left end (r = 0.1, p = 1 pass tr = tp = 0.05) has its centre
    # 2 * 45 / (diag_G 102.0 + diag_D 22.4) = 0.72 away: accepted at the default 1.0, rejected at 0.5
    far = [(gt(rect(0, 0, 100, 20)), dets(rect(0, 0, 10, 20)))]
    assert evaluate(far, protocol=DetEvalProtocol(tr=0.05, tp=0.05)).hmean == 1.0
    assert evaluate(far, protocol=DetEvalProtocol(tr=0.05, tp=0.05, center_thr=0.5)).hmean == 0.0


def test_deteval_removes_dont_care_detections() -> None:
    truth = gt(rect(0, 0, 100, 20), rect(200, 0, 300, 20), ignore=(1,))
    res = evaluate([(truth, dets(rect(0, 0, 100, 20), rect(200, 0, 300, 20)))], protocol="deteval")
    assert res.counts["det_care"] == 1 and res.precision == 1.0


def test_resolve_protocol() -> None:
    assert resolve_protocol("iou") == IoUProtocol()
    assert resolve_protocol("deteval") == DetEvalProtocol(tr=0.8, tp=0.4)
    custom = DetEvalProtocol(tr=0.7, tp=0.6)
    assert resolve_protocol(custom) is custom
    with pytest.raises(ValueError, match="'hmean'"):
        resolve_protocol("hmean")


# ------------------------------------------------------------------------------------- sweep, chunks


def sweep_case() -> list[tuple[list[Instance], list[Detection]]]:
    # 3 GT; true positives scored 0.9, 0.7, 0.65; false positives 0.55, 0.5, 0.45, 0.35
    a = (
        gt(rect(0, 0, 10, 10), rect(20, 0, 30, 10)),
        dets(rect(0, 0, 10, 10), rect(20, 0, 30, 10), rect(50, 50, 60, 60), rect(70, 50, 80, 60),
             scores=(0.9, 0.65, 0.55, 0.35)),
    )  # fmt: skip
    b = (
        gt(rect(0, 0, 10, 10)),
        dets(rect(200, 0, 210, 10), rect(0, 0, 10, 10), rect(300, 0, 310, 10), scores=(0.5, 0.7, 0.45)),
    )
    return [a, b]


def test_sweep_table_and_best_threshold() -> None:
    sweep = threshold_sweep(sweep_case())
    assert [r.threshold for r in sweep.rows] == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]  # 0.9 included
    # by hand: thr 0.3 TP 3 FP 4 -> P 3/7; 0.4 FP 3 -> 1/2; 0.5 FP 2 -> 3/5; 0.6 FP 0 -> 1, R 1;
    # 0.7 TPs 0.9 + 0.7 -> R 2/3; 0.8, 0.9 one TP -> R 1/3 (score 0.9 >= 0.9 is kept)
    precisions = [3 / 7, 1 / 2, 3 / 5, 1.0, 1.0, 1.0, 1.0]
    recalls = [1.0, 1.0, 1.0, 1.0, 2 / 3, 1 / 3, 1 / 3]
    assert [r.precision for r in sweep.rows] == pytest.approx(precisions)
    assert [r.recall for r in sweep.rows] == pytest.approx(recalls)
    assert sweep.best_threshold == 0.6 and sweep.best_hmean == 1.0 and sweep.best.threshold == 0.6
    assert "optimistic" in sweep.note
    for row in sweep.rows:  # each row is exactly a fixed-threshold evaluation
        fixed = evaluate(sweep_case(), min_score=row.threshold)
        assert (row.precision, row.recall, row.hmean) == (fixed.precision, fixed.recall, fixed.hmean)


def test_sweep_computes_intersections_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = ev._intersections

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "_intersections", counting)
    monkeypatch.setattr(ev, "CHUNK", 1)  # one call per image
    threshold_sweep(sweep_case(), thresholds=THRESHOLDS, protocol="iou")
    assert calls["n"] == 2  # two images, not 2 x 7 thresholds
    threshold_sweep(sweep_case(), protocol="deteval")
    assert calls["n"] == 4


def test_chunked_evaluation_equals_per_image(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    pairs = []
    for _ in range(7):  # images of different sizes, some empty, crossing chunk borders
        boxes = [rect(x, y, x + 30, y + 10) for x, y in rng.integers(0, 100, (int(rng.integers(0, 5)), 2))]
        preds = [b + rng.normal(0, 3, (4, 2)) for b in boxes] + [rect(150, 150, 160, 160)] * int(
            rng.integers(0, 2)
        )
        pairs.append((gt(*boxes, ignore=(0,)), dets(*preds)))
    monkeypatch.setattr(ev, "CHUNK", 3)
    res = evaluate(pairs)
    for (truth, preds), chunked in zip(pairs, res.per_image, strict=True):
        alone = evaluate_image(truth, preds)
        assert chunked.pairs == alone.pairs
        assert chunked.det_dontcare.tolist() == alone.det_dontcare.tolist()
        assert np.array_equal(chunked.iou, alone.iou)


# ------------------------------------------------------------------------------------- real fixture


def read_ic15(path: Path) -> list[Instance]:
    text = codecs.decode(path.read_bytes(), "utf-8-sig")
    out = []
    for line in text.splitlines():
        if line.strip():
            fields = line.split(",", 8)
            pts = np.array([float(v) for v in fields[:8]]).reshape(4, 2)  # (4, 2)
            out.append(Instance(pts, fields[8], ignore=fields[8].strip() == "###"))
    return out


def shift(points: np.ndarray, t: float) -> np.ndarray:
    """Move right by t x the box's width: for these near-rectangles IoU ~ (1 - t) / (1 + t)."""
    width = points[:, 0].max() - points[:, 0].min()
    return points + [t * width, 0.0]


def test_fixture_perturbed_predictions_match_hand_derivation() -> None:
    if not FIXTURE.is_dir():
        pytest.skip(f"IC15 fixture not present at {FIXTURE} (lives beside the repo, not in a user's clone)")
    images = {n: read_ic15(FIXTURE / "gts" / f"gt_img_{n}.txt") for n in range(1, 7)}
    # care GTs per image (file order): 1: Genaxis Theatre, [06], 62-03, Carpark (+3 DC); 2: EXIT, I2R;
    # 3: fusionopolis x2 (+11 DC); 4: none (3 DC); 5: none (2 DC); 6: Reserve, CAUTION (+18 DC) -> 10 care GT.
    care = {n: [g for g in inst if not g.ignore] for n, inst in images.items()}
    assert [len(care[n]) for n in range(1, 7)] == [4, 2, 2, 0, 0, 2]
    i1, i2, i3, i6 = care[1], care[2], care[3], care[6]
    preds = {
        1: [
            Detection(shift(i1[0].points, 0.1)),  # Genaxis, IoU ~ 0.9/1.1 = 0.82 -> match
            Detection(
                shift(i1[1].points, 0.5)
            ),  # [06], IoU ~ 0.5/1.5 = 0.33 -> care false positive, GT missed
            Detection(i1[2].points[::-1].copy()),  # 62-03 counter-clockwise, IoU 1 -> match
            # Carpark dropped -> missed
            Detection(
                images[1][2].points.copy()
            ),  # on the `###` box 374,155..409,170: covered 1.0 -> don't care
        ],
        2: [Detection(shift(i2[0].points, 0.1))],  # EXIT -> match; I2R dropped -> missed
        3: [
            Detection(i3[0].points.copy()),
            Detection(shift(i3[1].points, 0.1)),
        ],  # both fusionopolis -> match
        4: [Detection(rect(100, 600, 200, 650))],  # far from every box -> care false positive
        5: [],
        6: [
            Detection(shift(i6[0].points, 0.1)),  # Reserve -> match; CAUTION dropped -> missed
            # half on the `###` box 748,95..787,109 (39 x 14 = 546 of 78 x 14 = 1092: exactly 0.5, not > 0.5)
            # -> a care false positive
            Detection(rect(748, 95, 826, 109)),
        ],
    }
    # preconditions of the derivation, checked with plain shapely: the shifted IoUs fall on the intended side
    assert shapely_iou(i1[0].points, preds[1][0].points) > 0.5 > shapely_iou(i1[1].points, preds[1][1].points)
    for truth, det in [(i2[0], preds[2][0]), (i3[1], preds[3][1]), (i6[0], preds[6][0])]:
        assert shapely_iou(truth.points, det.points) > 0.5
    res = evaluate([(images[n], preds[n]) for n in range(1, 7)])
    # RRC algorithm by hand: matched = Genaxis, 62-03, EXIT, fusionopolis x2, Reserve = 6;
    # care GT = 4 + 2 + 2 + 0 + 0 + 2 = 10; care det = 3 (img 1, the `###` one set aside) + 1 + 2 + 1 + 0 + 2 = 9.
    # R = 6/10, P = 6/9, H = 2 (2/3)(3/5) / (2/3 + 3/5) = 12/19.
    assert res.counts == {"images": 6, "gt_care": 10, "det_care": 9, "matched_gt": 6, "matched_det": 6}
    assert res.recall == pytest.approx(0.6, abs=1e-12)
    assert res.precision == pytest.approx(2 / 3, abs=1e-12)
    assert res.hmean == pytest.approx(12 / 19, abs=1e-12)
    assert res.per_image[0].det_dontcare.tolist() == [False, False, False, True]
    assert res.per_image[5].det_dontcare.tolist() == [False, False]


def test_packed_input_and_vectorised_orientation() -> None:
    from tcm.evaluation import PackedImage, PackedPolygons, clockwise, clockwise_packed, edge_sums

    rng = np.random.default_rng(3)
    polys = [rng.integers(0, 50, size=(n, 2)).astype(np.float64) for n in (4, 5, 4, 7, 4)]
    polys[2] = polys[2][::-1]  # a mix of orientations
    packed, reversed_ = clockwise_packed(PackedPolygons.of(polys))
    start = np.cumsum(packed.sizes) - packed.sizes
    for i, p in enumerate(polys):  # same as the one-polygon rule, polygon by polygon
        assert packed.flat[start[i] : start[i] + len(p)].tolist() == clockwise(p).tolist()
        assert reversed_[i] == (edge_sums(PackedPolygons.of([p]))[0] > 0)
    truth = [Instance(rect(0, 0, 10, 10)), Instance(rect(20, 0, 30, 10), ignore=True)]
    found = [Detection(rect(1, 0, 11, 10), 0.9), Detection(rect(21, 0, 30, 10), 0.8)]
    a = evaluate([(truth, found)])
    b = evaluate([PackedImage.of(truth, found)])
    # IoU 9/11 > 0.5: a match; the second detection lies on the don't-care GT: P = R = 1 both ways
    assert (a.precision, a.recall, a.counts) == (b.precision, b.recall, b.counts)
    assert (b.precision, b.recall, b.counts["det_care"]) == (1.0, 1.0, 1)


def test_pruned_evaluation_takes_the_same_decisions() -> None:
    # Without IoU matrices (keep_iou=False) pairs that cannot reach a threshold are skipped: same outcome.
    rng = np.random.default_rng(11)
    scenes = []
    for _ in range(40):
        corners = rng.uniform(0, 300, (12, 2))  # (12, 2) top-left corners
        sizes = np.stack([rng.uniform(10, 80, 12), rng.uniform(5, 30, 12)], axis=1)  # (12, 2) w, h
        truth = [
            Instance(rect(*xy, *(xy + wh)), ignore=bool(rng.random() < 0.3))
            for xy, wh in zip(corners, sizes, strict=True)
        ]
        found = []
        for g in truth:  # near copies: IoU and don't-care cover around their thresholds
            for _ in range(2):
                x0, y0 = g.points[0] + rng.normal(0, 6, 2)
                x1, y1 = g.points[2] + rng.normal(0, 6, 2)
                found.append(Detection(rect(x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)), float(rng.random())))
        found += [Detection(rect(x, y, x + 40, y + 15), 0.5) for x, y in rng.uniform(0, 300, (10, 2))]
        scenes.append((truth, found))
    full = evaluate(scenes, keep_iou=True)
    pruned = evaluate(scenes, keep_iou=False)
    assert pruned.counts == full.counts and 0 < full.counts["matched_gt"] < full.counts["gt_care"]
    for a, b in zip(full.per_image, pruned.per_image, strict=True):
        assert a.pairs == b.pairs and b.iou is None
        assert np.array_equal(a.det_dontcare, b.det_dontcare)
    assert sum(int(r.det_dontcare.sum()) for r in full.per_image) > 0
