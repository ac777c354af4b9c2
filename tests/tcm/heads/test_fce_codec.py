"""FCENet codec: Fourier signature, centre region, level assignment, target maps, NMS and round trips."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import shapely

from tcm.config import FCEHeadConfig
from tcm.evaluation import evaluate
from tcm.geometry import is_clockwise
from tcm.heads.fce_codec import (
    FCECodec,
    center_region_polygon,
    fourier_signature,
    fourier_to_polygons,
    head_tail_edges,
    poly_nms,
)
from tcm.types import Instance

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared"
CANVAS = 640  # FCENet training crop side (as the acceptance round trip uses)
K = 5  # fourier degree


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)  # (4, 2) clockwise on screen


def arc_band(
    cx: float, cy: float, radius: float, thick: float, a0: float, span: float, n: int = 7
) -> np.ndarray:
    """A curved word: 2n points (CTW1500 layout), outer arc left -> right then inner arc right -> left."""
    t = np.linspace(a0, a0 + span, n)
    outer = np.stack([cx + (radius + thick / 2) * np.cos(t), cy + (radius + thick / 2) * np.sin(t)], axis=1)
    inner = np.stack([cx + (radius - thick / 2) * np.cos(t), cy + (radius - thick / 2) * np.sin(t)], axis=1)
    return np.concatenate([outer, inner[::-1]])  # (2n, 2)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = shapely.make_valid(shapely.Polygon(a)), shapely.make_valid(shapely.Polygon(b))
    return pa.intersection(pb).area / pa.union(pb).area


def reconstruct(poly: np.ndarray, degree: int = K, points: int = 200) -> np.ndarray:
    c = fourier_signature(poly, degree)  # (2k+1,) complex
    return fourier_to_polygons(c.real[None], c.imag[None], points)[0]  # (points, 2)


# ------------------------------------------------------------------------------------------ Fourier


def test_fourier_round_trip_recovers_the_polygon():
    band = arc_band(320, 400, 200, 80, -np.pi / 2 - 0.3, 0.6)  # a gently curved, thick word (aspect ~1.5)
    assert iou(band, reconstruct(band)) > 0.95
    square = rect(100, 100, 160, 160)
    assert iou(square, reconstruct(square)) > 0.95
    # more harmonics -> closer to a thin word's sharp corners
    thin = rect(100, 100, 300, 120)
    assert (
        iou(thin, reconstruct(thin, 2)) < iou(thin, reconstruct(thin, 5)) < iou(thin, reconstruct(thin, 12))
    )


def test_fourier_signature_normalises_start_and_orientation():
    band = arc_band(320, 400, 200, 60, -np.pi / 2 - 0.4, 0.8)
    c = fourier_signature(band, K)
    assert np.abs(c[K + 1]) > np.abs(c[K - 1])  # dominant c_1: clockwise on screen
    # counter-clockwise input or another start vertex: the same vector, up to where the 400 samples fall
    tol = 0.02 * np.abs(c[K + 1])
    assert np.abs(c - fourier_signature(band[::-1], K)).max() < tol
    assert np.abs(c - fourier_signature(np.roll(band, 5, axis=0), K)).max() < tol
    contour = reconstruct(band)
    assert is_clockwise(contour)
    centre_x = band[:, 0].mean()
    # starts at the top middle
    assert abs(contour[0, 0] - centre_x) < 10 and contour[0, 1] < band[:, 1].mean()
    assert np.allclose(c[K], band.mean(axis=0) @ [1, 1j], atol=5)  # c_0 = contour centroid (x + iy)


# ------------------------------------------------------------------------------------- centre region


def test_head_tail_edges_quads_and_curved_polygons():
    assert sorted(head_tail_edges(rect(0, 0, 100, 20), 2.0)) == [1, 3]  # horizontal word: the short sides
    assert sorted(head_tail_edges(rect(0, 0, 20, 100), 2.0)) == [0, 2]  # vertical word: the short sides again
    # square-ish quad: the vertical pair is not `orientation_thr` x longer, so the vertical sides are the ends
    assert sorted(head_tail_edges(rect(0, 0, 30, 40), 2.0)) == [1, 3]
    band = arc_band(320, 400, 150, 40, -np.pi / 2 - 1.0, 2.0)  # 14 points, ends are edges 6 and 13
    assert sorted(head_tail_edges(band, 2.0)) == [6, 13]
    rolled = np.roll(band, 3, axis=0)  # same polygon, start vertex moved: the ends move with it
    assert sorted(head_tail_edges(rolled, 2.0)) == [2, 9]
    total_text = np.concatenate([band[:7][::2], band[7:]])  # 4 top + 7 bottom points (uneven sidelines)
    h, t = head_tail_edges(total_text, 2.0)
    assert sorted((h, t)) == [3, 10]


def test_center_region_is_a_thin_band_along_the_centre_line():
    word = rect(100, 100, 300, 140)  # 200 x 40
    centre = center_region_polygon(word, 4.0, 0.3, 2.0)
    x0, y0 = centre.min(axis=0)
    x1, y1 = centre.max(axis=0)
    assert (y0, y1) == pytest.approx((114.0, 126.0))  # 0.3 x the half height around y = 120
    assert 100 < x0 < 110 and 290 < x1 < 300  # a few resample steps dropped at the head and the tail
    band = arc_band(320, 400, 150, 40, -np.pi / 2 - 1.0, 2.0)
    centre = shapely.Polygon(center_region_polygon(band, 4.0, 0.3, 2.0))
    outer = shapely.Polygon(band)
    assert centre.is_valid and outer.contains(centre)
    assert 0.2 < centre.area / outer.area < 0.35  # shrink 0.3 of the width, minus the dropped ends


def test_triangles_and_repeated_vertices_still_get_a_centre_region_and_decode():
    triangle = np.array([[100, 100], [300, 110], [120, 160]], dtype=np.float64)
    repeated = np.array([[350, 300], [500, 300], [500, 300], [500, 340], [350, 340]], dtype=np.float64)
    for poly in (triangle, repeated):
        centre = shapely.Polygon(center_region_polygon(poly, 4.0, 0.3, 2.0))
        assert centre.intersection(shapely.Polygon(poly)).area > 0.9 * centre.area > 0  # mostly inside
    codec = FCECodec(FCEHeadConfig())
    dets = codec.decode(
        codec.targets_as_outputs(codec.encode([triangle, repeated], [False, False], 640, 640))
    )
    assert len(dets) == 2
    assert (
        max(iou(d.points, triangle) for d in dets) > 0.7 and max(iou(d.points, repeated) for d in dets) > 0.8
    )


# ----------------------------------------------------------------------------------------------- encode


def test_level_assignment_uses_image_height_and_open_ranges():
    codec = FCECodec(FCEHeadConfig())  # ranges (0, .4), (.3, .7), (.6, 1)
    H = 400
    for size, levels in [(40, [0]), (140, [0, 1]), (200, [1]), (260, [1, 2]), (320, [2]), (420, [])]:
        assert codec.level_of(rect(0, 0, size, 10), H) == levels, size  # the longer side counts, over height
    polys = [rect(10, 10, 90, 30), rect(10, 100, 210, 140)]  # proportions 0.2 -> s8 only, 0.5 -> s16 only
    t = codec.encode(polys, [False, False], H, 800)
    assert t["level_s8"][0, 1:4, 1:11].all() and not t["level_s8"][0, 12:18].any()
    assert t["level_s16"][0, 6:9, 1:13].all() and not t["level_s16"][0, :4].any()
    assert not t["level_s32"][0].any()


def test_encode_maps_shapes_and_fourier_offsets():
    cfg = FCEHeadConfig()
    codec = FCECodec(cfg)
    word = arc_band(300, 500, 200, 40, -np.pi / 2 - 0.5, 1.0)  # ~200 px wide on 640 -> s8 and s16
    ignored = rect(380, 40, 460, 80)
    t = codec.encode([word, ignored], [False, True], CANVAS, 480)
    assert set(t) == {"level_s8", "level_s16", "level_s32", "aux_text", "aux_mask"}
    for s in cfg.strides:
        assert (
            t[f"level_s{s}"].shape == (4 * K + 5, CANVAS // s, 480 // s)
            and t[f"level_s{s}"].dtype == np.float32
        )
    assert t["aux_text"].shape == t["aux_mask"].shape == (CANVAS // 32, 480 // 32)  # the score map's grid
    assert t["aux_mask"][60 // 32, 420 // 32] == 0 and t["aux_text"][60 // 32, 420 // 32] == 0  # don't care
    level = t["level_s8"]
    tr, tcl, mask = level[0], level[1], level[2]
    assert mask[60 // 8, 420 // 8] == 0 and tr[60 // 8, 420 // 8] == 0 and mask.sum() > mask.size * 0.9
    assert 0 < tcl.sum() < 0.6 * tr.sum() and (tcl <= tr).mean() > 0.97  # the centre lies inside the word
    ys, xs = np.nonzero(tr)
    real, imag = level[3 : 3 + 2 * K + 1], level[3 + 2 * K + 1 :]
    centroid = real[K, ys, xs] + xs + 1j * (imag[K, ys, xs] + ys)  # c_0 - (x + iy) + (x + iy)
    assert np.allclose(centroid, word.mean(axis=0) @ [1, 1j] / 8, atol=1.0)
    c1 = real[K + 1, ys, xs] + 1j * imag[K + 1, ys, xs]
    assert np.ptp(c1.real) == 0 and np.ptp(c1.imag) == 0 and np.abs(c1[0]) > 5  # c_1 constant over the word
    assert not real[:, tr == 0].any() and not imag[:, tr == 0].any()  # no coefficients outside text


def test_targets_as_outputs_are_confident_logits_and_the_gt_coefficients():
    codec = FCECodec(FCEHeadConfig())
    t = codec.encode([rect(100, 100, 300, 140)], [False], CANVAS, CANVAS)
    out = codec.targets_as_outputs(t)
    assert set(out) == {f"{n}_s{s}" for n in ("cls", "reg") for s in (8, 16, 32)}
    cls, level = out["cls_s8"], t["level_s8"]
    assert cls.shape == (4, 80, 80) and out["reg_s8"].shape == (22, 80, 80)
    assert ((cls[1] > cls[0]) == (level[0] > 0)).all() and ((cls[3] > cls[2]) == (level[1] > 0)).all()
    assert np.abs(cls).min() >= 10
    assert np.array_equal(out["reg_s8"], level[3:])


# ----------------------------------------------------------------------------------------------- decode


def test_poly_nms_suppresses_overlaps_and_keeps_disjoint_polygons():
    a, b, c = rect(0, 0, 100, 20), rect(5, 0, 105, 20), rect(0, 50, 100, 70)
    polys = np.stack([a, b, c])  # (3, 4, 2)
    assert poly_nms(polys, np.array([0.5, 0.9, 0.7]), 0.1).tolist() == [1, 2]  # b beats a; c is apart
    assert poly_nms(polys, np.array([0.5, 0.9, 0.7]), 0.95).tolist() == [1, 2, 0]  # IoU 0.9 < 0.95 survives
    bowtie = np.array([[0, 0], [100, 20], [100, 0], [0, 20]], dtype=np.float64)  # invalid: repaired, not lost
    assert poly_nms(np.stack([bowtie, c]), np.array([0.9, 0.8]), 0.1).tolist() == [0, 1]
    flat = np.array([[0, 0], [50, 0], [100, 0], [50, 0]], dtype=np.float64)  # no area: never a detection
    assert poly_nms(np.stack([flat, c]), np.array([0.9, 0.8]), 0.1).tolist() == [1]


def test_decode_empty_outputs_and_scale():
    codec = FCECodec(FCEHeadConfig())
    assert codec.decode(codec.targets_as_outputs(codec.encode([], [], 320, 320))) == []
    word = rect(100, 100, 260, 160)
    out = codec.targets_as_outputs(codec.encode([word], [False], 320, 320))
    (plain,) = codec.decode(out)
    (scaled,) = codec.decode(out, scale=(2.0, 0.5))
    assert plain.points.shape == (50, 2) and plain.score > 0.99
    assert np.allclose(scaled.points, plain.points * [2.0, 0.5])
    assert iou(plain.points, word) > 0.85
    (quad,) = FCECodec(FCEHeadConfig(mode="quad")).decode(out)
    assert quad.points.shape == (4, 2) and is_clockwise(quad.points) and iou(quad.points, word) > 0.85


def test_decode_score_is_tr_alpha_times_tcl_beta_over_threshold():
    cfg = FCEHeadConfig()
    codec = FCECodec(cfg)
    out = codec.targets_as_outputs(codec.encode([rect(100, 100, 260, 160)], [False], 320, 320))
    # TR probability 0.6 everywhere: 0.6^1.2 = 0.54 passes 0.3 where TCL is on; 0.35^1.2 = 0.28 does not
    for s in cfg.strides:
        out[f"cls_s{s}"][0:2] = 0.0
        out[f"cls_s{s}"][1] = np.log(0.6 / 0.4)
    (det,) = codec.decode(out)
    assert det.score == pytest.approx(0.6**cfg.alpha, rel=1e-4)
    for s in cfg.strides:
        out[f"cls_s{s}"][1] = np.log(0.35 / 0.65)
    assert codec.decode(out) == []


# ----------------------------------------------------------------------------------------- round trips


def round_trip_hmean(codec: FCECodec, images: list[list[Instance]], height: int, width: int) -> float:
    pairs = []
    for instances in images:
        t = codec.encode([i.points for i in instances], [i.ignore for i in instances], height, width)
        pairs.append((instances, codec.decode(codec.targets_as_outputs(t))))
    return evaluate(pairs).hmean


def curved_images(rng: np.random.Generator, n: int) -> list[list[Instance]]:
    """Arc-shaped 14-point words of various radii, thicknesses, spans, positions, directions on 640 x 640."""
    images = []
    for _ in range(n):
        placed: list[np.ndarray] = []
        for _ in range(40):
            radius = rng.uniform(40, 400)
            thick = rng.uniform(10, min(80, radius))
            span = rng.uniform(0.3, 2.0) * min(1.0, 200 / radius)
            centre = rng.uniform(0, CANVAS, 2)
            band = arc_band(*centre, radius, thick, rng.uniform(0, 2 * np.pi), span)
            if band.min() < 0 or band.max() > CANVAS - 1:
                continue
            if any(shapely.Polygon(band).buffer(3).intersects(shapely.Polygon(p)) for p in placed):
                continue
            placed.append(band)
            if len(placed) == 6:
                break
        images.append([Instance(np.round(p)) for p in placed])  # integer vertices, as Total-Text stores
    return images


def test_curved_text_round_trip_hmean():
    images = curved_images(np.random.default_rng(0), 12)
    assert sum(len(i) for i in images) >= 40
    assert round_trip_hmean(FCECodec(FCEHeadConfig()), images, CANVAS, CANVAS) >= 0.9


def test_synthetic_totaltext_and_ic15_round_trip_hmean():
    synth = pytest.importorskip("tcm.data.synth", reason="synthetic generator not present")
    for fmt, mode in (("totaltext", "poly"), ("icdar2015", "quad")):
        layout = synth.layout_for(fmt)
        images = [
            synth.render_image(synth.image_rng(3, "train", k), CANVAS, CANVAS, layout)[1] for k in range(6)
        ]
        assert round_trip_hmean(FCECodec(FCEHeadConfig(mode=mode)), images, CANVAS, CANVAS) >= 0.9, fmt


def test_ic15_fixture_round_trip_hmean():
    root = SHARED / "fixtures" / "icdar2015"
    if not root.is_dir():
        pytest.skip(f"real ICDAR2015 fixture not present at {root} (only on project machines and CI)")
    import cv2

    from tcm.data.formats import get_format

    fmt = get_format("icdar2015")
    codec = FCECodec(replace(FCEHeadConfig(), mode="quad"))
    pairs = []
    for gt in sorted((root / "gts").glob("gt_img_*.txt")):
        image = cv2.imread(str(root / "images" / gt.name.removeprefix("gt_").replace(".txt", ".jpg")))
        H, W = image.shape[:2]
        instances = fmt.parse(gt.read_bytes(), str(gt))
        t = codec.encode([i.points for i in instances], [i.ignore for i in instances], H, W)
        pairs.append((instances, codec.decode(codec.targets_as_outputs(t))))
    assert evaluate(pairs).hmean >= 0.95


def test_matching_target_is_the_released_1_32_text_region_map():
    """Released FCENetCLIPTargets: a fourth level at stride 32 with every polygon of proportion (0, 1), filled
    from int-cast coordinates (cv2 fills the boundary cells too); ignored polygons zero the mask."""
    codec = FCECodec(FCEHeadConfig())
    word = rect(64, 32, 192, 96)  # cells x 2..6, y 1..3
    ignored = rect(200, 0, 250, 20)  # cells x 6..7, y 0
    too_big = rect(0, 0, 250, 300)  # taller than the image: proportion > 1, on no level
    t = codec.encode([word, ignored, too_big], [False, True, False], 256, 256)
    expected_text = np.zeros((8, 8), np.float32)
    expected_text[1:4, 2:7] = 1
    expected_mask = np.ones((8, 8), np.float32)
    expected_mask[0, 6:8] = 0
    np.testing.assert_array_equal(t["aux_text"], expected_text)
    np.testing.assert_array_equal(t["aux_mask"], expected_mask)
