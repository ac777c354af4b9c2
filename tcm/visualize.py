"""Pictures of evaluation results, as PNG files the pipelines log to MLflow (library functions only).

- `plot_threshold_curve(sweep, path)`: precision / recall / hmean against the score threshold (matplotlib Agg,
  no pyplot global state).
- `draw_overlay(image_bgr, gt, dets, image_result)`: ground truth and detections over an image (OpenCV), one
  colour per outcome, with a legend.
- `save_png(image_bgr, path)`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tcm.evaluation import ImageResult, SweepResult
from tcm.types import Detection, Instance

# BGR colours, chosen to stay apart for common colour-vision deficiencies (blue / orange / magenta / grey).
GT_MATCHED = (0, 200, 0)  # green: ground truth found
GT_MISSED = (0, 0, 255)  # red: ground truth not found
DET_MATCHED = (255, 160, 0)  # azure: detection matched to a ground truth
DET_FALSE_POSITIVE = (0, 165, 255)  # orange: detection matched to nothing
DONT_CARE = (170, 170, 170)  # grey: `###` ground truth and detections set aside on it
LEGEND = (
    ("GT matched", GT_MATCHED),
    ("GT missed", GT_MISSED),
    ("det matched", DET_MATCHED),
    ("false positive", DET_FALSE_POSITIVE),
    ("don't care", DONT_CARE),
)


def plot_threshold_curve(sweep: SweepResult, path: str | Path) -> Path:
    """Write a PNG of precision, recall and hmean against the score threshold; returns the path."""
    thr = [r.threshold for r in sweep.rows]
    fig = Figure(figsize=(6.4, 4.4), dpi=100)  # 640 x 440 px: readable in the MLflow artifact viewer
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(thr, [r.precision for r in sweep.rows], "o-", label="precision", color="tab:blue")
    ax.plot(thr, [r.recall for r in sweep.rows], "s-", label="recall", color="tab:orange")
    ax.plot(thr, [r.hmean for r in sweep.rows], "^-", label="hmean", color="tab:green", linewidth=2)
    ax.axvline(sweep.best_threshold, color="grey", linestyle=":", linewidth=1)
    ax.annotate(
        f"best hmean {sweep.best_hmean:.4f}\nat score >= {sweep.best_threshold:.2f}",
        (sweep.best_threshold, sweep.best_hmean),
        textcoords="offset points",
        xytext=(8, -30),
        fontsize=8,
    )
    ax.set_xlabel("score threshold (keep score >= t)")
    ax.set_ylabel("value")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{sweep.protocol.kind} protocol: threshold sweep")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.text(
        0.01, 0.01, textwrap.fill(f"Note: {sweep.note}", 110), fontsize=6.5, color="dimgrey", va="bottom"
    )
    fig.subplots_adjust(bottom=0.2)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _polyline(image: np.ndarray, points: np.ndarray, colour: tuple[int, int, int], thickness: int) -> None:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)  # (P, 2)
    if len(pts) < 2 or not np.isfinite(pts).all():
        return  # nothing drawable (the evaluation counted it with area 0)
    corners = np.rint(pts).astype(np.int32).reshape(-1, 1, 2)  # (P, 1, 2) as OpenCV takes polylines
    cv2.polylines(image, [corners], True, colour, thickness, cv2.LINE_8)  # no anti-aliasing: exact colours


def _legend(image: np.ndarray, scale: float) -> None:
    H, W = image.shape[:2]
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(scale * 1.5))
    line_h = int(22 * scale) + 4
    width = max(cv2.getTextSize(name, font, 0.5 * scale, thick)[0][0] for name, _ in LEGEND) + int(40 * scale)
    x0, y0 = 4, 4
    box_w, box_h = min(width, W - x0), min(line_h * len(LEGEND) + 6, H - y0)
    region = image[y0 : y0 + box_h, x0 : x0 + box_w]
    region[:] = (region * 0.35).astype(np.uint8)  # darkened panel behind the text
    for i, (name, colour) in enumerate(LEGEND):
        y = y0 + 4 + i * line_h + line_h // 2
        cv2.line(image, (x0 + 4, y), (x0 + int(26 * scale), y), colour, max(2, thick + 1))
        cv2.putText(image, name, (x0 + int(32 * scale), y + int(5 * scale)), font, 0.5 * scale, colour, thick)


def draw_overlay(
    image_bgr: np.ndarray, gt: Sequence[Instance], dets: Sequence[Detection], image_result: ImageResult
) -> np.ndarray:
    """A copy of the image (H, W, 3) uint8 with every GT and kept detection outlined by outcome, and a legend.

    GT outlines are drawn wide and detections thin on top, so a detection on its GT leaves both visible. The
    legend sits in the top-left corner.
    `image_result` must come from evaluating exactly these `gt` and `dets` (its arrays are indexed like them).
    """
    img = np.asarray(image_bgr)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"draw_overlay needs an (H, W, 3) uint8 BGR image, got {img.shape} {img.dtype}")
    r = image_result
    if len(gt) != len(r.gt_matched) or len(dets) != len(r.det_matched):
        raise ValueError(
            f"image_result is for {len(r.gt_matched)} GT / {len(r.det_matched)} detections, "
            f"got {len(gt)} GT / {len(dets)} detections"
        )
    out = img.copy()
    H, W = out.shape[:2]
    scale = max(0.6, min(H, W) / 600)  # text and lines grow with the image
    gt_thick, det_thick = (
        max(2, round(3 * scale)),
        max(1, round(1.2 * scale)),
    )  # GT wider: visible under its det
    for inst, dc, hit in zip(gt, r.gt_dontcare, r.gt_matched, strict=True):
        _polyline(out, inst.points, DONT_CARE if dc else GT_MATCHED if hit else GT_MISSED, gt_thick)
    for det, kept, dc, hit in zip(dets, r.det_kept, r.det_dontcare, r.det_matched, strict=True):
        if kept:  # below the score threshold: not part of the evaluation, not drawn
            _polyline(
                out, det.points, DONT_CARE if dc else DET_MATCHED if hit else DET_FALSE_POSITIVE, det_thick
            )
    _legend(out, scale)
    return out


def save_png(image_bgr: np.ndarray, path: str | Path) -> Path:
    """Write an image as PNG (parent folders created); returns the path."""
    try:
        ok, data = cv2.imencode(".png", np.asarray(image_bgr))
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode an image of shape {np.shape(image_bgr)} as PNG")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data.tobytes())
    return out
