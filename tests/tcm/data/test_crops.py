"""Word crops: rectified quads and curved polygons match the flat rendering; degenerate polygons are refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tcm.data import synth_words as sw
from tcm.data.crops import DegenerateError, clockwise, crop_word

SIZE = (128, 32)  # (w, h) both crops are resized to: the recogniser's aspect, small enough to forgive 1 px
# Threshold of the rectification acceptance. Measured (seeds 0-3, three words): rectified crops score 0.974 -
# 0.999 against the flat rendering; another word on the same font/colours scores 0.34 - 0.42, the correct
# crop turned upside down 0.11 - 0.41, and the flat crop itself turned by only 3 degrees 0.81 (5: 0.65,
# 10: 0.42). So 0.9 demands the word, upright, to within ~2 degrees: a rectifier that leaves a residual
# rotation, flips the word or crops the wrong region fails it (the last three are asserted below).
NCC_MIN = 0.9


def gray(image: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float64)
    return cv2.resize(g, SIZE, interpolation=cv2.INTER_AREA)  # (32, 128)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two grayscale images of one size: 1 = identical up to gain/offset."""
    a, b = gray(a), gray(b)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def flat_crop(word: str) -> np.ndarray:
    image, polygon = sw.render_on_path(word, "flat", np.random.default_rng(0))
    return crop_word(image, polygon)


@pytest.mark.parametrize("word", ["Rectify", "STRAIGHT"])
@pytest.mark.parametrize("kind", ["rotated", "perspective", "curved"])
def test_rectified_crop_matches_the_flat_rendering(word, kind):
    reference = flat_crop(word)
    for seed in range(3):
        image, polygon = sw.render_on_path(word, kind, np.random.default_rng(seed))
        assert len(polygon) == (14 if kind == "curved" else 4)
        crop = crop_word(image, polygon)
        assert crop.shape[0] < crop.shape[1]  # horizontal
        score = ncc(crop, reference)
        assert score >= NCC_MIN, (kind, seed, score)
        assert ncc(np.rot90(crop, 2), reference) < NCC_MIN  # the same crop turned over does not pass


def test_threshold_separates_other_words_and_wrong_rotation():
    reference = flat_crop("Rectify")
    assert ncc(flat_crop("Monster"), reference) < 0.6
    assert ncc(np.rot90(reference, 2), reference) < 0.6
    h, w = reference.shape[:2]
    turned = cv2.warpAffine(
        reference, cv2.getRotationMatrix2D((w / 2, h / 2), 3.0, 1.0), (w, h), borderMode=cv2.BORDER_REPLICATE
    )
    assert ncc(turned, reference) < NCC_MIN  # a 3-degree residual rotation already fails
    assert ncc(reference, reference) == pytest.approx(1.0)


def test_quad_size_order_and_tall_rotation():
    image = np.zeros((100, 200), np.uint8)
    image[20:31, 10:61] = 255  # a 51 x 11 white box
    cw = np.array([[10, 20], [60, 20], [60, 30], [10, 30]], float)
    crop = crop_word(image, cw)
    assert crop.shape == (11, 51) and crop.min() > 200  # exactly the box (vertices are pixel centres)
    ccw = cw[[0, 3, 2, 1]]  # counter-clockwise, same first point
    np.testing.assert_array_equal(clockwise(ccw), cw)
    np.testing.assert_array_equal(crop_word(image, ccw), crop)
    # a vertical word: 11 wide, 51 tall -> turned 90 degrees counter-clockwise into 51 x 11
    image2 = np.zeros((100, 100), np.uint8)
    image2[10:61, 20:31] = np.arange(51, dtype=np.uint8)[:, None] * 4  # brighter downwards
    tall = crop_word(image2, np.array([[20, 10], [30, 10], [30, 60], [20, 60]], float))
    assert tall.shape == (11, 51)
    assert tall[5, 0] < tall[5, -1]  # CCW: the top of the vertical word (read first) is now on the left


def test_flat_coordinates_and_three_points_use_the_min_area_rectangle():
    image = np.full((50, 80, 3), 7, np.uint8)
    crop = crop_word(image, [5.0, 5.0, 40.0, 5.0, 40.0, 20.0])
    assert crop.ndim == 3 and crop.shape[2] == 3 and min(crop.shape[:2]) >= 2


@pytest.mark.parametrize(
    ("points", "reason"),
    [
        ([[0, 0], [5, 5]], "fewer than 3 points"),
        ([[0, 0], [10, 0], [np.nan, 5], [0, 5]], "non-finite"),
        ([[0, 0], [10, 0], [20, 0], [30, 0]], r"area below 4 px\^2 \(0.00\)"),
        ([[0, 0], [40, 0], [40, 1], [0, 1]], r"thinner than 2 px \(.*1.0.*\)"),
    ],
)
def test_degenerate_polygons_are_refused_with_the_reason(points, reason):
    with pytest.raises(DegenerateError, match=reason):
        crop_word(np.zeros((50, 50), np.uint8), np.asarray(points, float))
