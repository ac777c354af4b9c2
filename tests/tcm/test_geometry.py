import cv2
import numpy as np
import pytest

from tcm.geometry import (
    inverse_shrink_distance,
    is_clockwise,
    min_area_quad,
    offset_polygon,
    order_quad,
    polygon_area,
    polygon_perimeter,
    rect_short_side,
    shrink_distance,
    shrink_polygon,
    signed_area,
    to_clockwise,
    unclip_distance,
)

# 60 x 20 rectangle, clockwise on the screen (TL, TR, BR, BL with y down)
RECT = np.array([[10, 10], [70, 10], [70, 30], [10, 30]], dtype=np.float64)


def test_area_perimeter_and_orientation():
    assert polygon_area(RECT) == pytest.approx(1200)
    assert polygon_perimeter(RECT) == pytest.approx(160)
    assert signed_area(RECT) > 0 and is_clockwise(RECT)
    ccw = RECT[::-1]
    assert signed_area(ccw) == pytest.approx(-1200) and not is_clockwise(ccw)
    np.testing.assert_array_equal(to_clockwise(ccw), RECT)
    np.testing.assert_array_equal(to_clockwise(RECT), RECT)


def test_shrink_distance_formula_and_kernel():
    d = shrink_distance(RECT, 0.4)
    assert d == pytest.approx(1200 * (1 - 0.16) / 160)  # 6.3
    kernel = shrink_polygon(RECT, 0.4, precision=64)
    x0, y0 = kernel.min(axis=0)
    x1, y1 = kernel.max(axis=0)
    np.testing.assert_allclose([x0, y0, x1, y1], [10 + d, 10 + d, 70 - d, 30 - d], atol=1 / 64)


def test_shrink_cap_and_failures():
    big = RECT * 10  # D would be 63 px
    kernel = shrink_polygon(big, 0.5, max_distance=20, precision=8)
    np.testing.assert_allclose(kernel.min(axis=0), big.min(axis=0) + 20, atol=0.2)
    assert offset_polygon(np.array([[0, 0], [50, 0], [50, 4], [0, 4]]), -3) == []  # vanishes
    # two 20x20 squares joined by a 2 px bridge: shrinking by 4 px splits it -> failure
    dumbbell = np.array([[0, 0], [20, 0], [20, 9], [40, 9], [40, 0], [60, 0], [60, 20], [40, 20], [40, 11],
                         [20, 11], [20, 20], [0, 20]], dtype=np.float64)
    assert len(offset_polygon(dumbbell, -4)) == 2
    assert shrink_polygon(dumbbell, 0.0, max_distance=4) is None


def test_dilation_grows_area_like_a_round_offset():
    d = 5.0
    (grown,) = offset_polygon(RECT, d, precision=16)
    strips = 1200 + 160 * d  # rectangle + side strips; the 4 corners add quarter discs, drawn as chords
    assert strips + 0.85 * np.pi * d * d < polygon_area(grown) <= strips + np.pi * d * d


def test_rounding_modes():
    square = np.array([[0.9, 0.9], [10.9, 0.9], [10.9, 10.9], [0.9, 10.9]])
    (rounded,) = offset_polygon(square, 0)
    (truncated,) = offset_polygon(square, 0, rounding="trunc")
    assert rounded.min() == 1 and rounded.max() == 11
    assert truncated.min() == 0 and truncated.max() == 10


@pytest.mark.parametrize("aspect", [1, 2, 4, 8, 16])
def test_inverse_shrink_distance_undoes_the_shrink(aspect):
    h = 20.0
    w = aspect * h
    d = shrink_distance(np.array([[0, 0], [w, 0], [w, h], [0, h]]), 0.4)
    kw, kh = w - 2 * d, h - 2 * d  # the kernel rectangle
    back = inverse_shrink_distance(kw * kh, 2 * (kw + kh), 0.4)
    assert back == pytest.approx(d, rel=1e-9)
    # a constant unclip ratio inverts it for one aspect only: ~1.45 for the square, more for long text
    ratio = d / unclip_distance(np.array([[0, 0], [kw, 0], [kw, kh], [0, kh]]), 1.0)
    assert (1.4 < ratio < 1.5) if aspect == 1 else ratio > 1.6


def test_order_quad_and_min_area_quad():
    rect = ((50.0, 40.0), (60.0, 20.0), 20.0)
    corners = cv2.boxPoints(rect)
    for shift in range(4):
        quad = order_quad(np.roll(corners, shift, axis=0))
        assert is_clockwise(quad)
        assert quad[0, 0] + quad[0, 1] == pytest.approx(min(corners.sum(axis=1)), abs=1e-3)  # top-left first
    quad = min_area_quad(np.array([[0, 0], [30, 0], [30, 10], [15, 12], [0, 10]]))
    assert is_clockwise(quad)
    assert rect_short_side(quad) == pytest.approx(12, abs=1e-3)
    with pytest.raises(ValueError, match="4 corners"):
        order_quad(RECT[:3])
