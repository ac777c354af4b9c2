"""Polygon-aware augmentation: image and polygons move together, care text is never cut, seeds reproduce."""

from __future__ import annotations

import io
from dataclasses import replace

import cv2
import numpy as np
import pytest
import shapely
from PIL import Image

from tcm.data.transforms import (
    AugmentConfig,
    apply_plan,
    clip_polygons,
    colour_jitter,
    decode_image,
    flip_matrix,
    normalize,
    random_augment,
    resize_for_test,
    rotate_expand_matrix,
    sample_plan,
    transform_polygons,
)

# 3 care words and 1 don't-care strip across the bottom, on a 400 x 300 image
POLYS = [
    np.array([[50, 40], [150, 40], [150, 80], [50, 80]], float),
    np.array([[200, 150], [330, 170], [320, 220], [190, 200]], float),
    np.array([[260, 30], [380, 30], [380, 70], [300, 90], [260, 70]], float),  # non-convex pentagon
    np.array([[10, 250], [390, 250], [390, 290], [10, 290]], float),
]
IGNORE = [False, False, False, True]
CFG = AugmentConfig(crop_size=256)


def _filled(height: int, width: int, polygons: list[np.ndarray]) -> np.ndarray:
    """(H, W) uint8 mask, 255 inside the polygons (pixel-index coordinates, as cv2 draws them)."""
    mask = np.zeros((height, width), np.uint8)
    for p in polygons:
        cv2.fillPoly(mask, [np.round(p).astype(np.int32)], 255)
    return mask


def test_flip_maps_x_to_w_minus_1_minus_x_exactly():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (128, 256, 3), dtype=np.uint8)  # H=128, W=256
    # flip always, no rotation, scale 1, and a crop that can never be valid -> the whole image, which fits the
    # 256 x 256 canvas at 1:1 (min(256 / 256, 256 / 128) = 1)
    cfg = replace(CFG, flip_prob=1.0, max_rotate_deg=0.0, scale_range=(1.0, 1.0), min_crop_side_ratio=1.0)
    poly = np.array([[10.0, 20.0], [60.0, 20.0], [60.0, 50.0], [10.0, 50.0]])
    out, polys, ignore = random_augment(image, [poly], [False], rng, cfg)
    assert out.shape == (256, 256, 3)
    np.testing.assert_array_equal(out[:128], image[:, ::-1])
    assert not out[128:].any()  # zero padding below
    expected = np.stack([255.0 - poly[:, 0], poly[:, 1]], axis=1)  # x -> W - 1 - x
    assert len(polys) == 1 and ignore == [False]
    np.testing.assert_allclose(polys[0], expected, atol=1e-9)
    np.testing.assert_allclose(
        _apply_3x3(flip_matrix(200), np.array([[0.0, 0.0], [199.0, 5.0]])), [[199, 0], [0, 5]]
    )


def _apply_3x3(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return transform_polygons([pts], m)[0]


def test_rotate_expand_keeps_every_pixel():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    m, w, h = rotate_expand_matrix(50, 30, 90.0)
    assert (w, h) == (30, 50)
    rotated = cv2.warpAffine(image, m[:2], (w, h), flags=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(rotated, cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE))
    # a small angle grows the canvas so that all four corners stay inside it
    m, w, h = rotate_expand_matrix(50, 30, 10.0)
    corners = _apply_3x3(m, np.array([[0, 0], [49, 0], [0, 29], [49, 29]], float))
    assert (
        corners.min() >= -1e-9 and corners[:, 0].max() <= w - 1 + 1e-9 and corners[:, 1].max() <= h - 1 + 1e-9
    )
    assert w > 50 and h > 30


@pytest.mark.parametrize("size", [256, 128])  # 128: shrinks below 0.5x, through the pyrDown path
def test_pixels_and_polygons_move_together(size: int):
    """Fill the polygons white on black, augment: white pixels = the transformed polygons (up to resampling)."""
    image = cv2.cvtColor(_filled(300, 400, POLYS), cv2.COLOR_GRAY2BGR)
    kernel = np.ones((5, 5), np.uint8)  # 2 px either side: bilinear resampling and polygon rounding
    cfg = replace(CFG, crop_size=size)
    for seed in range(60):
        plan = sample_plan(400, 300, POLYS, IGNORE, np.random.default_rng(seed), cfg)
        out, polys, _ = apply_plan(image, POLYS, IGNORE, plan, size)
        white = out[:, :, 0] > 127
        # every output polygon (clipped to the content) is ink ...
        kept = _filled(size, size, polys)
        core = cv2.erode(kept, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)  # 2 px in
        assert not (core & ~white).any(), f"seed {seed}: polygon without ink"
        # ... and all ink lies on the polygons moved by the same matrix (before clipping: the last content row
        # may blend in ink of a polygon part just beyond the crop edge)
        moved = _filled(
            size + 8, size + 8, transform_polygons(POLYS, plan.matrix)
        )  # margin: parts just off it
        near = cv2.dilate(moved, kernel)[:size, :size].astype(bool)
        assert not (white & ~near).any(), f"seed {seed}: ink off the polygons"
        assert white.sum() > 0.8 * (kept > 0).sum()


def test_crop_keeps_care_text_whole():
    image = np.zeros((300, 400, 3), np.uint8)
    real_crops = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        plan = sample_plan(400, 300, POLYS, IGNORE, rng, CFG)
        out, polys, ignore = apply_plan(image, POLYS, IGNORE, plan, CFG.crop_size)
        moved = transform_polygons(POLYS, plan.matrix)
        for poly, ign in zip(moved, IGNORE, strict=True):
            if ign:
                continue
            inside = (
                (poly >= -1e-6).all()
                & (poly[:, 0] <= plan.x_max + 1e-6).all()
                & (poly[:, 1] <= plan.y_max + 1e-6).all()
            )
            outside = (
                (poly[:, 0] < 0).all()
                | (poly[:, 1] < 0).all()
                | (poly[:, 0] > plan.x_max).all()
                | (poly[:, 1] > plan.y_max).all()
            )
            assert inside or outside, f"seed {seed}: care polygon cut by the crop"
            if inside:  # kept unchanged, with its flag
                assert any(len(p) == len(poly) and np.allclose(p, poly) for p in polys)
        assert len(polys) == len(ignore)
        real_crops += plan.crop != (0, 0, *plan.extent)
    assert real_crops > 10  # the test saw actual crops, not only the whole-image fallback


def test_partly_outside_polygons_are_clipped_and_outside_ones_dropped():
    square = np.array([[-10.0, 10.0], [30.0, 10.0], [30.0, 50.0], [-10.0, 50.0]])  # 1/4 hangs off the left
    gone = np.array([[200.0, 0.0], [220.0, 0.0], [220.0, 20.0], [200.0, 20.0]])  # right of x_max = 100
    inside = np.array([[40.0, 40.0], [60.0, 40.0], [60.0, 60.0]])
    polys, ignore = clip_polygons([square, gone, inside], [True, False, False], 100.0, 80.0)
    assert ignore == [True, False]
    clipped = shapely.Polygon(polys[0])
    assert clipped.area == pytest.approx(30 * 40)
    assert clipped.bounds == pytest.approx((0.0, 10.0, 30.0, 50.0))
    np.testing.assert_array_equal(polys[1], inside)


def test_same_seed_same_result_other_seed_differs():
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)

    def run(seed: int):
        r = np.random.default_rng(seed)
        out, polys, ignore = random_augment(image, POLYS, IGNORE, r, CFG)
        return colour_jitter(out, r, CFG), polys, ignore

    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a[0], b[0])
    assert len(a[1]) == len(b[1]) and all(np.array_equal(p, q) for p, q in zip(a[1], b[1], strict=True))
    assert not np.array_equal(a[0], c[0])


def test_colour_jitter_keeps_zero_padding_and_grey_stays_grey_under_saturation():
    grey = np.full((8, 8, 3), 100, np.uint8)
    grey[4:] = 0
    only_sat = replace(CFG, brightness=0.0)
    out = colour_jitter(grey, np.random.default_rng(0), only_sat)
    np.testing.assert_array_equal(out, grey)  # saturation does not change a grey pixel; black stays black
    bright = replace(CFG, brightness=0.5, saturation=0.0)
    factors = {int(colour_jitter(grey, np.random.default_rng(s), bright)[0, 0, 0]) for s in range(20)}
    assert min(factors) >= 50 and max(factors) <= 150 and len(factors) > 5
    assert not colour_jitter(grey, np.random.default_rng(1), bright)[4:].any()


def test_normalize_is_rgb_chw_with_mean_std():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30  # B, G, R
    out = normalize(image, mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], [(30 - 1) / 2, (20 - 2) / 4, (10 - 3) / 8])


def test_resize_for_test_follows_mmcv_keep_ratio_and_pads_to_32():
    image = np.full((720, 1280, 3), 7, np.uint8)
    out, (sx, sy) = resize_for_test(image, 4068, 1024)  # TCM IC15 test scale: 1280x720 -> 1820x1024
    assert out.shape == (1024, 1824, 3)
    assert (out[:, :1820] == 7).all() and not out[:, 1820:].any()
    assert (sx, sy) == pytest.approx((1280 / 1820, 720 / 1024))
    capped, _ = resize_for_test(image, 4068, 1024, max_side=640)
    assert capped.shape == (384, 640, 3)  # 1280x720 -> 640x360, padded to 384


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decode_ignores_exif_orientation_and_reads_gif():
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": must NOT be applied, the annotations refer to stored pixels
    jpeg = _encode(Image.fromarray(rgb), "JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image(jpeg)
    assert decoded.shape == (20, 40, 3)
    assert decoded[10, 5, 2] > 200 and decoded[10, 5, 0] < 60  # BGR: red is channel 2
    gif = decode_image(_encode(Image.fromarray(rgb), "GIF"))
    assert gif.shape == (20, 40, 3) and gif[10, 5, 2] > 200 and gif[10, 35, 2] < 60
    with pytest.raises(ValueError, match="cannot decode image"):
        decode_image(b"not an image")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="multiple of 32"):
        AugmentConfig(crop_size=100)
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(2.0, 1.0))
