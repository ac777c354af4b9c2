"""Evaluation speed: tcm.evaluation (vectorised shapely 2) against a plain per-pair shapely loop, same run.

Random realistic scenes (1280x720, rotated word boxes with integer corners, ~20 % don't care; a share of
the predictions are jittered copies of ground truths so IoUs straddle 0.5, the rest are random boxes), the
ICDAR 2015 IoU protocol computed both ways, asserted identical, and the timing ratio written to
benchmarks/RESULTS.md (section "## Evaluation speed", the rest of the file untouched).

    .venv/bin/python benchmarks/eval_speed.py --images 500 --preds 100 --gts 30 --seed 0
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import shapely
from shapely.geometry import Polygon

from tcm.evaluation import evaluate, threshold_sweep
from tcm.types import Detection, Instance

WIDTH, HEIGHT = 1280, 720  # ICDAR 2015 image size
DONT_CARE_RATE = 0.2  # IC15 test GT has about this share of `###` boxes
SECTION = "## Evaluation speed"
T = TypeVar("T")


def rotated_box(
    rng: np.random.Generator, cx: float, cy: float, w: float, h: float, angle: float
) -> np.ndarray:
    """Integer corners (4, 2) of a w x h box rotated by angle (radians) about (cx, cy), clockwise on screen."""
    local = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2  # (4, 2) TL, TR, BR, BL
    c, s = np.cos(angle), np.sin(angle)
    pts = local @ np.array([[c, s], [-s, c]]) + [cx, cy]  # (4, 2)
    return np.rint(pts)


def random_box(rng: np.random.Generator) -> np.ndarray:
    w, h = rng.uniform(30, 250), rng.uniform(10, 50)  # word-sized boxes
    cx, cy = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
    return rotated_box(rng, cx, cy, w, h, rng.uniform(-0.5, 0.5))


def make_scene(rng: np.random.Generator, n_gt: int, n_pred: int) -> tuple[list[Instance], list[Detection]]:
    gt_params = []
    gt = []
    for _ in range(n_gt):
        w, h = rng.uniform(30, 250), rng.uniform(10, 50)
        cx, cy, angle = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(-0.5, 0.5)
        gt_params.append((cx, cy, w, h, angle))
        gt.append(Instance(rotated_box(rng, cx, cy, w, h, angle), ignore=bool(rng.random() < DONT_CARE_RATE)))
    dets = []
    n_near = min(n_pred, int(n_gt * 1.2))  # some GTs get two candidates: exercises the greedy order
    for _ in range(n_near):
        cx, cy, w, h, angle = gt_params[rng.integers(n_gt)]
        jitter = rng.normal(0, 0.15, size=4)  # IoU spread around the 0.5 threshold
        box = rotated_box(
            rng, cx + jitter[0] * w, cy + jitter[1] * h, w * (1 + jitter[2]), h * (1 + jitter[3]), angle
        )
        dets.append(Detection(box, float(rng.random())))
    dets += [Detection(random_box(rng), float(rng.random())) for _ in range(n_pred - n_near)]
    order = rng.permutation(len(dets))
    return gt, [dets[i] for i in order]


# ------------------------------------------------------------------ baseline: the RRC script's loops


def plain_polygon(points: np.ndarray) -> Polygon:
    """Same polygon rule as tcm.evaluation (make_valid 'structure' for invalid input), one at a time."""
    poly = Polygon(points)
    if not poly.is_valid:
        poly = shapely.make_valid(poly, method="structure", keep_collapsed=False)
    return poly


def baseline_image(gt: list[Instance], dets: list[Detection]) -> tuple[int, int, int]:
    """(matched, care GT, care det) by the RRC algorithm with one shapely call per pair."""
    gt_polys = [plain_polygon(g.points) for g in gt]
    det_polys = [plain_polygon(d.points) for d in dets]
    dc_gt = [i for i, g in enumerate(gt) if g.ignore]
    dc_det = set()
    for j, d in enumerate(det_polys):
        area = d.area
        for i in dc_gt:
            covered = 0.0 if area == 0 else gt_polys[i].intersection(d).area / area
            if covered > 0.5:
                dc_det.add(j)
                break
    iou = [[0.0] * len(det_polys) for _ in gt_polys]
    for i, g in enumerate(gt_polys):
        for j, d in enumerate(det_polys):
            inter = g.intersection(d).area
            union = g.area + d.area - inter
            iou[i][j] = inter / union if union > 0 else 0.0
    gt_used = [False] * len(gt_polys)
    det_used = [False] * len(det_polys)
    matched = 0
    for i in range(len(gt_polys)):
        for j in range(len(det_polys)):
            if gt_used[i] or det_used[j] or gt[i].ignore or j in dc_det:
                continue
            if iou[i][j] > 0.5:
                gt_used[i] = det_used[j] = True
                matched += 1
    return matched, len(gt) - len(dc_gt), len(dets) - len(dc_det)


def baseline(scenes: list[tuple[list[Instance], list[Detection]]]) -> tuple[float, float, float]:
    matched = gt_care = det_care = 0
    for gt, dets in scenes:
        m, g, d = baseline_image(gt, dets)
        matched, gt_care, det_care = matched + m, gt_care + g, det_care + d
    recall = matched / gt_care if gt_care else 0.0
    precision = matched / det_care if det_care else 0.0
    hmean = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, hmean


# ------------------------------------------------------------------ report


def write_section(path: Path, body: str) -> None:
    """Replace (or append) the '## Evaluation speed' section of path, leaving every other section as it was."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    section = f"{SECTION}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=500, help="number of images")
    parser.add_argument("--preds", type=int, default=100, help="predictions per image")
    parser.add_argument("--gts", type=int, default=30, help="ground truths per image")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the scenes")
    parser.add_argument(
        "--results", type=Path, default=Path(__file__).with_name("RESULTS.md"), help="markdown file to update"
    )
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    scenes = [make_scene(rng, args.gts, args.preds) for _ in range(args.images)]

    ours, w_ours, c_ours = timed(lambda: evaluate(scenes, "iou"))
    sweep, w_sweep, c_sweep = timed(lambda: threshold_sweep(scenes, protocol="iou"))
    base, w_base, c_base = timed(lambda: baseline(scenes))

    got = (ours.precision, ours.recall, ours.hmean)
    assert got == base, f"evaluator {got} != per-pair baseline {base}"
    ratio, wall_ratio = c_base / c_ours, w_base / w_ours
    c = ours.counts
    print(
        f"P/R/H identical: {got} (matched {c['matched_gt']:.0f}, care GT {c['gt_care']}, care det {c['det_care']})"
    )
    print(f"CPU s: tcm.evaluation {c_ours:.2f}, per-pair loop {c_base:.2f} -> {ratio:.1f}x faster")
    print(f"wall s: tcm.evaluation {w_ours:.2f}, per-pair loop {w_base:.2f} -> {wall_ratio:.1f}x faster")
    print(
        f"7-threshold sweep: CPU {c_sweep:.2f} s ({c_sweep / c_ours:.2f}x one evaluation; best {sweep.best_threshold})"
    )

    command = (
        f"python benchmarks/eval_speed.py --images {args.images} --preds {args.preds} --gts {args.gts} "
        f"--seed {args.seed}"
    )
    body = f"""
ICDAR 2015 IoU protocol on {args.images} random images x {args.preds} predictions x {args.gts} ground truths
(rotated integer quads, ~20 % don't care), `tcm.evaluation.evaluate` against a plain per-pair shapely loop of
the RRC algorithm in the same process. Both give P / R / H = {got[0]:.6f} / {got[1]:.6f} / {got[2]:.6f}
(asserted identical).

| evaluator | CPU s | wall s | speed-up (CPU) |
|---|---|---|---|
| per-pair shapely loop (baseline) | {c_base:.2f} | {w_base:.2f} | 1.0x |
| `tcm.evaluation.evaluate` | {c_ours:.2f} | {w_ours:.2f} | **{ratio:.1f}x** |
| `tcm.evaluation.threshold_sweep` (7 thresholds, IoUs once) | {c_sweep:.2f} | {w_sweep:.2f} | {c_base / c_sweep:.1f}x |

CPU seconds (`time.process_time`) are the figure of record: the machine is shared, which stretches wall time
unevenly between the runs. Wall-clock ratio in this run: {wall_ratio:.1f}x.

Command: `{command}`.
Machine: {os.cpu_count()} CPUs (nproc), load average {os.getloadavg()[0]:.1f} at the end, {platform.machine()},
Python {platform.python_version()}, shapely {shapely.__version__} (GEOS {".".join(map(str, shapely.geos_version))}).
"""
    write_section(args.results, body)
    print(f"updated {args.results}")


if __name__ == "__main__":
    main()
