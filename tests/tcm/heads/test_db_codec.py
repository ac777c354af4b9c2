from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely

from tcm.config import DBHeadConfig
from tcm.geometry import is_clockwise, shrink_distance
from tcm.heads.db_codec import DBCodec

CFG = DBHeadConfig()
SHARED = Path(__file__).resolve().parents[3] / ".." / "shared"
KEYS = {"gt_shrink", "gt_shrink_mask", "gt_thr", "gt_thr_mask", "aux_text", "aux_mask"}


def rect(x0, y0, x1, y1) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask > 0.5)
    return xs.min(), ys.min(), xs.max(), ys.max()


def db_threshold_reference(poly: np.ndarray, distance: float, x: int, y: int) -> float:
    """DB's per-pixel formula (law of cosines, min over edges), for one pixel."""
    best = np.inf
    for a, b in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        a2 = (x - a[0]) ** 2 + (y - a[1]) ** 2
        b2 = (x - b[0]) ** 2 + (y - b[1]) ** 2
        c2 = ((a - b) ** 2).sum()
        cos = (c2 - a2 - b2) / (2 * np.sqrt(a2 * b2) + 1e-12)
        d = np.sqrt(min(a2, b2)) if cos < 0 else np.sqrt(max(a2 * b2 * (1 - cos * cos) / c2, 0))
        best = min(best, d)
    return 1 - min(max(best / distance, 0), 1)


def test_encode_rectangle_shrink_and_threshold_map():
    poly = rect(50, 60, 150, 100)  # 100 x 40
    out = DBCodec(CFG).encode([poly], [False], 160, 200)
    assert set(out) == KEYS
    assert all(v.dtype == np.float32 and v.shape == (160, 200) for v in out.values())
    d = shrink_distance(poly, 0.4)
    assert d == pytest.approx(4000 * 0.84 / 280)  # 12 px
    x0, y0, x1, y1 = box_of(out["gt_shrink"])
    np.testing.assert_allclose([x0, y0, x1, y1], [50 + d, 60 + d, 150 - d, 100 - d], atol=1)
    thr = out["gt_thr"]
    assert thr[60, 100] == pytest.approx(0.7)  # on the border
    assert thr[80, 100] == pytest.approx(0.3)  # 20 px inside, farther than D
    assert thr[60 - 6, 100] == pytest.approx(0.5, abs=0.01)  # D/2 outside
    assert thr[5, 5] == pytest.approx(0.3)  # background
    # threshold mask = polygon dilated by D
    assert out["gt_thr_mask"][60 - 11, 100] == 1 and out["gt_thr_mask"][60 - 14, 100] == 0
    assert out["gt_shrink_mask"].min() == 1
    np.testing.assert_array_equal(out["aux_text"], out["gt_shrink"])
    np.testing.assert_array_equal(out["aux_mask"], out["gt_shrink_mask"])


def test_threshold_map_matches_db_formula_near_the_border():
    poly = np.array([[40, 30], [110, 40], [120, 90], [70, 110], [30, 80]], dtype=np.float64)
    out = DBCodec(CFG).encode([poly], [False], 140, 150)
    d = shrink_distance(poly, 0.4)
    rng = np.random.default_rng(0)
    inside = np.argwhere(out["gt_thr_mask"] > 0)
    same = 0
    for y, x in inside[rng.choice(len(inside), 200, replace=False)]:
        db = db_threshold_reference(poly, d, x, y) * 0.4 + 0.3
        ours = out["gt_thr"][y, x]
        # DB takes the nearer endpoint whenever the angle at the pixel is acute, which overestimates the
        # distance near segment ends: its value is never above the true point-to-segment one, and close to it
        assert db - 1e-5 <= ours <= db + 0.02
        same += abs(ours - db) < 1e-5
    assert same > 150


def test_overlapping_polygons_keep_the_larger_threshold():
    a, b = rect(20, 20, 80, 50), rect(60, 20, 120, 50)
    codec = DBCodec(CFG)
    both = codec.encode([a, b], [False, False], 80, 140)["gt_thr"]
    only_a = codec.encode([a], [False], 80, 140)["gt_thr"]
    only_b = codec.encode([b], [False], 80, 140)["gt_thr"]
    np.testing.assert_allclose(both, np.maximum(only_a, only_b))


def test_ignored_and_tiny_polygons_only_zero_the_mask():
    kept, ignored, tiny = rect(10, 10, 90, 40), rect(10, 60, 90, 90), rect(120, 20, 160, 25)  # tiny: 5 px high
    out = DBCodec(CFG).encode([kept, ignored, tiny], [False, True, False], 100, 180)
    mask = out["gt_shrink_mask"]
    assert mask[75, 50] == 0 and mask[22, 140] == 0 and mask[25, 50] == 1
    assert out["gt_shrink"][60:, :].max() == 0 and out["gt_shrink"][:, 110:].max() == 0
    assert out["gt_thr_mask"][75, 50] == 0 and out["gt_thr_mask"][22, 140] == 0
    assert out["gt_shrink"][25, 50] == 1


def test_empty_image():
    out = DBCodec(CFG).encode([], [], 32, 48)
    assert out["gt_shrink"].max() == 0 and out["gt_shrink_mask"].min() == 1
    assert np.allclose(out["gt_thr"], 0.3) and out["gt_thr_mask"].max() == 0
    assert DBCodec(CFG).decode(DBCodec(CFG).targets_as_outputs(out)) == []


def round_trip(cfg: DBHeadConfig, poly: np.ndarray, H: int = 200, W: int = 300, scale=(1.0, 1.0)):
    codec = DBCodec(cfg)
    return codec.decode(codec.targets_as_outputs(codec.encode([poly], [False], H, W)), scale)


@pytest.mark.parametrize("size", [(60, 60), (160, 40), (240, 24)])
def test_decode_inverse_unclip_gives_back_the_rectangle(size):
    w, h = size
    poly = rect(30, 50, 30 + w, 50 + h)
    (det,) = round_trip(replace(CFG, unclip="inverse"), poly)
    assert det.score == pytest.approx(1.0)
    assert is_clockwise(det.points)
    np.testing.assert_allclose(det.points, poly, atol=2)  # same corners, same order (TL first)


def test_decode_rotated_rectangle():
    poly = cv2.boxPoints(((150.0, 100.0), (160.0, 50.0), 20.0)).astype(np.float64)
    (det,) = round_trip(replace(CFG, unclip="inverse"), poly)
    assert is_clockwise(det.points)
    a, b = shapely.Polygon(poly), shapely.Polygon(det.points)
    # cv2.fillPoly also paints pixels a slanted edge only grazes: the kernel comes back ~1 px thicker, and the
    # inverse unclip multiplies that by ~2.5 at this aspect ratio
    assert a.intersection(b).area / a.union(b).area > 0.9


def test_decode_default_ratio_recovers_a_square_and_scales():
    poly = rect(40, 40, 100, 100)  # the DB unclip ratio 1.5 inverts the shrink of a square (1.45)
    (det,) = round_trip(CFG, poly)
    np.testing.assert_allclose(det.points, poly, atol=2)
    (scaled,) = round_trip(CFG, poly, scale=(2.0, 0.5))
    np.testing.assert_allclose(scaled.points, np.round(det.points * [2.0, 0.5]), atol=1e-9)


def test_decode_box_threshold_and_score():
    logits = np.full((1, 100, 100), -20, np.float32)
    logits[0, 30:60, 20:80] = np.log(0.4 / 0.6)  # P = 0.4 inside
    codec = DBCodec(CFG)
    (det,) = codec.decode({"prob_logits": logits})
    assert det.score == pytest.approx(0.4, abs=0.02)
    assert codec.decode({"prob_logits": logits[0]})[0].score == det.score  # (H, W) accepted too
    assert DBCodec(replace(CFG, box_thresh=0.5)).decode({"prob_logits": logits}) == []
    assert DBCodec(replace(CFG, bin_thresh=0.45)).decode({"prob_logits": logits}) == []


def test_decode_poly_mode_curved_band():
    t = np.linspace(0, np.pi, 12)
    outer = np.stack([150 + 110 * np.cos(t), 160 - 110 * np.sin(t)], axis=1)
    inner = np.stack([150 + 70 * np.cos(t[::-1]), 160 - 70 * np.sin(t[::-1])], axis=1)
    band = np.concatenate([outer, inner])  # an arch 40 px thick
    (det,) = round_trip(replace(CFG, mode="poly", unclip="inverse"), band, H=200, W=300)
    assert len(det.points) > 4 and is_clockwise(det.points)
    a, b = shapely.Polygon(band), shapely.Polygon(det.points)
    assert a.intersection(b).area / a.union(b).area > 0.85
    (det_ratio,) = round_trip(replace(CFG, mode="poly"), band, H=200, W=300)  # DB's ratio 2.0
    b = shapely.Polygon(det_ratio.points)
    assert a.intersection(b).area / a.union(b).area > 0.6


def test_ic15_fixture_round_trip():
    root = SHARED / "fixtures" / "icdar2015"
    if not root.is_dir():
        pytest.skip(f"ICDAR 2015 fixture not found at {root} (it lives beside the repo, not in it)")
    from tcm.data.formats import get_format
    from tcm.evaluation import evaluate

    fmt = get_format("icdar2015")
    pairs = []
    for cfg in (CFG, replace(CFG, unclip="inverse"), replace(CFG, mode="poly")):
        codec = DBCodec(cfg)
        for image in sorted((root / "images").glob("*.jpg")):
            gt = fmt.parse((root / "gts" / f"gt_{image.stem}.txt").read_bytes(), image.name)
            H, W = cv2.imread(str(image), cv2.IMREAD_IGNORE_ORIENTATION).shape[:2]
            targets = codec.encode([g.points for g in gt], [g.ignore for g in gt], H, W)
            pairs.append((gt, codec.decode(codec.targets_as_outputs(targets))))
        result = evaluate(pairs)
        assert result.hmean >= 0.95, (cfg.mode, cfg.unclip, result.precision, result.recall)
        pairs.clear()


# ------------------------------------------------------------------ released TCM post-processing (issue #15 item 6)


def l_shaped_map() -> np.ndarray:
    """(1, 140, 160) logits: P = 0.9 on an L (bar x 20..119 y 20..39, leg x 20..39 y 40..99), 0.1 elsewhere."""
    p = np.full((140, 160), 0.1, np.float32)
    p[20:40, 20:120] = 0.9
    p[40:100, 20:40] = 0.9
    return np.log(p / (1 - p))[None]  # logits


# the L's contour corners (pixel centres): area 99*19 + 19*60 = 3021, perimeter 79+19+60+80+19+99 = 356
L_AREA, L_PERIMETER = 3021.0, 356.0


def test_released_path_scores_inside_the_polygon_and_unclips_it_before_the_rectangle():
    cfg = replace(CFG, postprocess="tcm", box_thresh=0.6, unclip_ratio=1.5, min_text_width=2, poly_epsilon_ratio=0.001)
    [det] = DBCodec(cfg).decode({"prob_logits": l_shaped_map()})
    assert det.score == pytest.approx(0.9, abs=1e-5)  # every pixel of the filled contour is on the L
    d = L_AREA * 1.5 / L_PERIMETER  # 12.73: D' of the L itself
    # minAreaRect of the L grown by d (round joins, integer offsets): the axis-aligned box, d beyond the corners
    np.testing.assert_allclose(det.points, rect(20 - d, 20 - d, 119 + d, 99 + d), atol=1.0)
    # DB's path scores the L's bounding rectangle: (3200 x 0.9 + 4800 x 0.1) / 8000 = 0.42 < box_thresh 0.6
    assert DBCodec(replace(cfg, postprocess="db")).decode({"prob_logits": l_shaped_map()}) == []


def test_released_path_min_width_is_checked_after_unclip():
    cfg = replace(CFG, postprocess="tcm", box_thresh=0.5, unclip_ratio=1.5, poly_epsilon_ratio=0.001)
    short = 79 + 2 * L_AREA * 1.5 / L_PERIMETER  # 104.5: the grown L's short side
    assert len(DBCodec(replace(cfg, min_text_width=short - 1.5)).decode({"prob_logits": l_shaped_map()})) == 1
    assert DBCodec(replace(cfg, min_text_width=short + 1.5)).decode({"prob_logits": l_shaped_map()}) == []


def test_released_poly_path_returns_the_unclipped_polygon():
    cfg = replace(CFG, postprocess="tcm", mode="poly", box_thresh=0.5, poly_unclip_ratio=2.0, poly_epsilon_ratio=0.0)
    [det] = DBCodec(cfg).decode({"prob_logits": l_shaped_map()})
    corners = np.array([[20, 20], [20, 99], [39, 99], [39, 39], [119, 39], [119, 20]], np.float64)
    expected = shapely.Polygon(corners).buffer(L_AREA * 2.0 / L_PERIMETER)  # round joins, as pyclipper's
    got = shapely.Polygon(det.points)
    assert is_clockwise(det.points)
    assert got.symmetric_difference(expected).area < 0.02 * expected.area  # the L's shape, not a rectangle
    assert got.area < 0.85 * got.minimum_rotated_rectangle.area
