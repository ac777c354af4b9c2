"""tcm.visualize: overlay colours per outcome, the threshold-curve PNG, PNG writing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tcm.evaluation import evaluate_image, threshold_sweep
from tcm.types import Detection, Instance
from tcm.visualize import (
    DET_FALSE_POSITIVE,
    DET_MATCHED,
    DONT_CARE,
    GT_MATCHED,
    GT_MISSED,
    draw_overlay,
    plot_threshold_curve,
    save_png,
)


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def scene() -> tuple[np.ndarray, list[Instance], list[Detection]]:
    """A 400 x 600 grey image; every outcome in its own place, below the legend (top-left corner)."""
    image = np.full((400, 600, 3), 40, dtype=np.uint8)
    gt = [
        Instance(rect(100, 200, 200, 240)),  # matched by det 0
        Instance(rect(300, 200, 400, 240)),  # missed
        Instance(rect(450, 300, 550, 340), ignore=True),  # don't care; det 2 sits on it
    ]
    dets = [
        Detection(rect(104, 206, 204, 246), 0.9),  # matched (IoU ~0.76)
        Detection(rect(100, 320, 200, 360), 0.8),  # false positive
        Detection(rect(455, 305, 545, 335), 0.7),  # don't care
        Detection(rect(300, 320, 400, 360), 0.1),  # below the threshold: not drawn
    ]
    return image, gt, dets


def colour_at(image: np.ndarray, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in image[y, x])


def test_overlay_colours_each_outcome() -> None:
    image, gt, dets = scene()
    before = image.copy()
    result = evaluate_image(gt, dets, min_score=0.5)
    out = draw_overlay(image, gt, dets, result)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(image, before)  # the input is not drawn on
    assert colour_at(out, 150, 200) == GT_MATCHED  # top edge of the matched GT (det 0's edge is at y = 206)
    assert colour_at(out, 150, 206) == DET_MATCHED
    assert colour_at(out, 350, 200) == GT_MISSED
    assert colour_at(out, 150, 320) == DET_FALSE_POSITIVE
    assert colour_at(out, 500, 300) == DONT_CARE and colour_at(out, 500, 305) == DONT_CARE
    assert colour_at(out, 350, 320) == (40, 40, 40)  # det 3 is below min_score: not part of the evaluation
    legend = out[:120, :200].reshape(-1, 3)
    for colour in (GT_MATCHED, GT_MISSED, DET_MATCHED, DET_FALSE_POSITIVE, DONT_CARE):
        assert (legend == colour).all(axis=1).any(), f"legend lacks {colour}"


def test_overlay_outcomes_follow_the_result() -> None:
    image, gt, dets = scene()
    result = evaluate_image(gt, dets[:1] + dets[1:2], min_score=0.0)  # nothing set aside; det 0 still matched
    result.gt_matched[:] = False  # a result that says GT 0 was missed must be drawn so
    out = draw_overlay(image, gt, dets[:2], result)
    assert colour_at(out, 150, 200) == GT_MISSED


def test_overlay_rejects_a_result_of_other_inputs() -> None:
    image, gt, dets = scene()
    result = evaluate_image(gt, dets)
    with pytest.raises(ValueError, match="4 detections, got 3 GT / 2 detections"):
        draw_overlay(image, gt, dets[:2], result)
    with pytest.raises(ValueError, match="uint8 BGR image"):
        draw_overlay(image.astype(np.float32), gt, dets, result)
    grey = draw_overlay(image[:, :, 0], gt, dets, result)  # a grey image is accepted and drawn in colour
    assert grey.shape == (400, 600, 3)


def test_threshold_curve_png(tmp_path: Path) -> None:
    _, gt, dets = scene()
    sweep = threshold_sweep([(gt, dets)])
    path = plot_threshold_curve(sweep, tmp_path / "plots" / "sweep.png")
    img = cv2.imread(str(path))
    assert img is not None and img.shape == (440, 640, 3)
    assert img.std() > 10  # drawn, not blank


def test_save_png_round_trip(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    path = save_png(image, tmp_path / "a" / "b.png")
    assert np.array_equal(cv2.imread(str(path)), image)  # PNG is lossless
    with pytest.raises(ValueError, match="could not encode"):
        save_png(np.zeros((0, 0, 3), dtype=np.uint8), tmp_path / "empty.png")
