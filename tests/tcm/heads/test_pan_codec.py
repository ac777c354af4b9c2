from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely

from tcm.config import PANHeadConfig
from tcm.geometry import is_clockwise, shrink_distance
from tcm.heads.pan_codec import PANCodec, grow_kernels

CFG = PANHeadConfig()
SHARED = Path(__file__).resolve().parents[3] / ".." / "shared"
KEYS = {"gt_text", "gt_kernel", "gt_mask", "aux_text", "aux_mask"}


def rect(x0, y0, x1, y1) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max(), ys.max()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = shapely.Polygon(a), shapely.Polygon(b)
    return pa.intersection(pb).area / pa.union(pb).area


def test_encode_instance_maps_and_kernel_distance():
    small, big = rect(20, 20, 100, 50), rect(20, 80, 380, 280)  # big: D = 75 px uncapped -> 20
    out = PANCodec(CFG).encode([small, big], [False, False], 300, 400)
    assert set(out) == KEYS and all(v.dtype == np.float32 and v.shape == (300, 400) for v in out.values())
    assert out["gt_text"][30, 50] == 1 and out["gt_text"][150, 200] == 2 and out["gt_text"][5, 5] == 0
    d = shrink_distance(small, 0.5)
    assert d == pytest.approx(2400 * 0.75 / 220)
    np.testing.assert_allclose(box_of(out["gt_kernel"] == 1), [20 + d, 20 + d, 100 - d, 50 - d], atol=1)
    np.testing.assert_allclose(box_of(out["gt_kernel"] == 2), [40, 100, 360, 260], atol=1)  # capped at 20
    np.testing.assert_array_equal(out["aux_mask"], out["gt_mask"])
    assert out["gt_mask"].min() == 1


def test_matching_target_is_the_full_text_region_as_released():
    """Released PANIdentityHead trains against gt_kernels[0], the shrink-1.0 kernel: the whole text region, not
    the shrunk kernel the head's kernel branch learns."""
    word, ignored = rect(20, 20, 100, 50), rect(20, 70, 100, 100)
    out = PANCodec(CFG).encode([word, ignored], [False, True], 120, 120)
    expected = np.zeros((120, 120), np.float32)
    expected[20:51, 20:101] = 1  # cv2 fills the boundary pixels too
    np.testing.assert_array_equal(out["aux_text"], expected)
    assert out["gt_kernel"].sum() < 0.7 * expected.sum()  # the kernel is the shrunk one
    assert out["aux_mask"][85, 50] == 0 and out["aux_mask"][35, 50] == 1


def test_ignored_polygon_is_masked_and_left_out_of_the_index_maps():
    kept, ignored = rect(20, 20, 100, 50), rect(20, 70, 100, 100)
    out = PANCodec(CFG).encode([ignored, kept], [True, False], 120, 120)
    assert out["gt_mask"][85, 50] == 0 and out["gt_mask"][35, 50] == 1
    assert out["gt_text"][85, 50] == 0 and out["gt_kernel"][85, 50] == 0
    assert out["gt_text"][35, 50] == 1  # labels count kept instances only


def round_trip(cfg, polys, H=200, W=320, scale=(1.0, 1.0)):
    codec = PANCodec(cfg)
    return codec.decode(codec.targets_as_outputs(codec.encode(polys, [False] * len(polys), H, W)), scale)


def test_decode_gives_back_block_aligned_rectangles_exactly():
    poly = rect(40, 60, 199, 99)  # covers the 4x4 blocks 10..49 x 15..24 exactly
    (det,) = round_trip(CFG, [poly])
    np.testing.assert_allclose(det.points, poly, atol=1e-3)
    assert is_clockwise(det.points) and det.score == pytest.approx(1.0)
    (scaled,) = round_trip(CFG, [poly], scale=(0.5, 2.0))
    np.testing.assert_allclose(scaled.points, poly * [0.5, 2.0], atol=1e-3)


def test_decode_rotated_rectangle_and_touching_instances():
    rotated = cv2.boxPoints(((160.0, 100.0), (180.0, 48.0), 15.0)).astype(np.float64)
    (det,) = round_trip(CFG, [rotated])
    assert iou(det.points, rotated) > 0.9
    left, right = rect(20, 40, 120, 80), rect(121, 40, 240, 80)  # touching: one text region, two kernels
    dets = round_trip(CFG, [left, right])
    assert len(dets) == 2
    dets.sort(key=lambda d: d.points[:, 0].min())
    assert iou(dets[0].points, left) > 0.85 and iou(dets[1].points, right) > 0.85


def test_decode_poly_mode_curved_band():
    t = np.linspace(0, np.pi, 12)
    outer = np.stack([160 + 120 * np.cos(t), 170 - 120 * np.sin(t)], axis=1)
    inner = np.stack([160 + 80 * np.cos(t[::-1]), 170 - 80 * np.sin(t[::-1])], axis=1)
    band = np.concatenate([outer, inner])
    (det,) = round_trip(replace(CFG, mode="poly"), [band])
    assert len(det.points) > 4 and is_clockwise(det.points)
    assert iou(det.points, band) > 0.85


def test_grow_kernels_stops_at_distant_vectors_and_non_text():
    text = np.zeros((1, 10), bool)
    text[0, :8] = True  # pixels 8, 9 are background
    labels = np.zeros((1, 10), np.int32)
    labels[0, 0] = 1
    emb = np.zeros((2, 1, 10), np.float32)
    emb[0, 0, 5:] = 10.0  # pixels 5.. are far from kernel 1's mean (0, 0)
    means = np.array([[0.0, 0.0], [0.0, 0.0]])
    grown = grow_kernels(labels, text, emb, means, max_distance=3.0)
    np.testing.assert_array_equal(grown[0], [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    labels[0, 7] = 2  # a second kernel whose mean matches the far pixels
    means = np.array([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0]])
    grown = grow_kernels(labels, text, emb, means, max_distance=3.0)
    np.testing.assert_array_equal(grown[0], [1, 1, 1, 1, 1, 2, 2, 2, 0, 0])


def test_decode_filters_by_area_and_score():
    h, w = 40, 60
    text = np.full((1, h, w), -20, np.float32)
    text[0, 5:15, 5:25] = np.log(0.6 / 0.4)  # 200 px instance, mean probability 0.6
    text[0, 25:28, 40:45] = 20.0  # 15 px instance: below min_area 16
    kernel = np.where(text > 0, 20.0, -20.0).astype(np.float32)
    outputs = {"text_logits": text, "kernel_logits": kernel, "embedding": np.zeros((4, h, w), np.float32)}
    (det,) = PANCodec(CFG).decode(outputs)
    assert det.score == pytest.approx(0.6, abs=1e-4)
    assert PANCodec(replace(CFG, score_thresh=0.7)).decode(outputs) == []
    assert len(PANCodec(replace(CFG, min_area=15)).decode(outputs)) == 2
    empty = {k: (np.full_like(v, -20) if k != "embedding" else v) for k, v in outputs.items()}
    assert PANCodec(CFG).decode(empty) == []


def test_ic15_fixture_round_trip():
    root = SHARED / "fixtures" / "icdar2015"
    if not root.is_dir():
        pytest.skip(f"ICDAR 2015 fixture not found at {root} (it lives beside the repo, not in it)")
    from tcm.data.formats import get_format
    from tcm.evaluation import evaluate

    fmt = get_format("icdar2015")
    for mode in ("quad", "poly"):
        codec = PANCodec(replace(CFG, mode=mode))
        pairs = []
        for image in sorted((root / "images").glob("*.jpg")):
            gt = fmt.parse((root / "gts" / f"gt_{image.stem}.txt").read_bytes(), image.name)
            H, W = cv2.imread(str(image), cv2.IMREAD_IGNORE_ORIENTATION).shape[:2]
            targets = codec.encode([g.points for g in gt], [g.ignore for g in gt], H, W)
            pairs.append((gt, codec.decode(codec.targets_as_outputs(targets))))
        result = evaluate(pairs)
        assert result.hmean >= 0.95, (mode, result.precision, result.recall)
