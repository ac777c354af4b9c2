"""`tcm score`: evaluate a folder of predictions in the RRC submission form against a ground-truth folder.

Predictions: one file per image, `res_<image name>.txt` (`res_img_12.txt` for `img_12.jpg`), one detection a
line: 2k integer coordinates x1,y1,...,xk,yk (k >= 3; 4 for ICDAR 2015), optionally followed by a confidence.
An odd number of fields means the last one is the confidence. Counter-clockwise corners are accepted and
turned clockwise (the RRC script would reject them). Ground truth: any dataset format the readers know
(`--gt-format`, default icdar2015 `gt_img_<id>.txt`), paired with predictions by the format's image key.

Bad input raises `ScoreError` (`file:line: reason`): a prediction file for an image without ground truth, a
file name that is not `res_<name>.txt`, a malformed line. An image without a prediction file counts its ground
truth as missed; an empty prediction folder scores precision 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import typer

from tcm.data.formats import get_format
from tcm.evaluation import (
    THRESHOLDS,
    EvalResult,
    ImageResult,
    SweepResult,
    clockwise,
    evaluate,
    resolve_protocol,
    threshold_sweep,
)
from tcm.types import AnnotationError, Detection, Instance

_PRED_NAME = re.compile(r"res_(.+)\.txt")  # RRC: res_img_<id>.txt for img_<id>.<ext>
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)  # RRC coordinates are integers


class ScoreError(ValueError):
    """Bad evaluation input; the message names the file (and line) and what was wrong."""


# --------------------------------------------------------------------------------------------- submission files


def submission_name(image_name: str) -> str:
    """`img_12.jpg` -> `res_img_12.txt` (the RRC's prediction file of an image)."""
    stem = Path(image_name).name.rpartition(".")[0] or Path(image_name).name
    return f"res_{stem}.txt"


def write_submission(path: str | Path, dets: Sequence[Detection], scores: bool = True) -> Path:
    """Write detections in the RRC form: clockwise corners rounded to integers, then the confidence.

    The confidence is written exactly (`repr`), so a sweep over the file sees the same scores as in memory.
    """
    rows = []
    for i, det in enumerate(dets):
        pts = np.asarray(det.points, dtype=np.float64).reshape(-1, 2)  # (P, 2)
        if len(pts) < 3 or not np.isfinite(pts).all():
            raise ValueError(f"{path}: detection {i} needs >= 3 finite points, got {pts.tolist()}")
        corners = np.rint(clockwise(pts)).astype(np.int64).reshape(-1)  # (2P,) x1, y1, x2, y2, ...
        row = ",".join(str(v) for v in corners.tolist())
        rows.append(f"{row},{float(det.score)!r}" if scores else row)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{r}\n" for r in rows), encoding="utf-8")
    return out


def read_submission(path: str | Path) -> list[Detection]:
    """Detections of one `res_*.txt` file (corners made clockwise; score 1.0 when the line has none)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ScoreError(f"{path}: cannot read ({err.strerror})") from None
    data = data.removeprefix(b"\xef\xbb\xbf")  # the RRC strips a UTF-8 BOM
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = data[: err.start].count(b"\n") + 1
        raise ScoreError(f"{path}:{line_no}: invalid UTF-8 at byte {err.start}") from None
    dets = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            dets.append(_parse_line(line, f"{path}:{line_no}"))
    return dets


def _parse_line(line: str, where: str) -> Detection:
    fields = [f.strip() for f in line.strip().split(",")]
    score = 1.0  # no confidence column: every detection is kept at any threshold
    if len(fields) % 2 == 1:
        text = fields.pop()
        try:
            score = float(text)
        except ValueError:
            raise ScoreError(f"{where}: confidence {text!r} is not a number") from None
        if not math.isfinite(score):
            raise ScoreError(f"{where}: confidence {text!r} is not finite")
    if len(fields) < 6:
        raise ScoreError(
            f"{where}: expected x1,y1,...,xk,yk with k >= 3 points (optionally then a confidence), "
            f"found {len(fields)} coordinate field(s)"
        )
    for i, text in enumerate(fields, start=1):
        if not _INTEGER.fullmatch(text):
            raise ScoreError(
                f"{where}: coordinate {i} {text!r} is not an integer (RRC submissions use integers)"
            )
    pts = np.array([int(v) for v in fields], dtype=np.float64).reshape(-1, 2)  # (P, 2)
    return Detection(clockwise(pts), score)


# --------------------------------------------------------------------------------------------- folders


def _natural(key: str) -> tuple[int, int | str]:
    """Sort `2` before `10`; non-numeric keys after numeric ones, alphabetically."""
    return (0, int(key)) if key.isdigit() else (1, key)


def _read_ground_truth(gt_dir: Path, gt_format: str) -> dict[str, tuple[Path, list[Instance]]]:
    try:
        fmt = get_format(gt_format)
    except ValueError as err:
        raise ScoreError(str(err)) from None
    if not gt_dir.is_dir():
        raise ScoreError(f"{gt_dir}: ground-truth folder does not exist")
    out: dict[str, tuple[Path, list[Instance]]] = {}
    for path in sorted(p for p in gt_dir.iterdir() if p.is_file()):
        key = fmt.annotation_key(path.name)
        if key is None:
            continue  # images or notes beside the annotations
        if key in out:
            raise ScoreError(f"{path}: same image as {out[key][0].name} (key {key!r})")
        try:
            out[key] = (path, fmt.parse(path.read_bytes(), str(path)))
        except AnnotationError as err:
            raise ScoreError(str(err)) from None
    if not out:
        raise ScoreError(f"{gt_dir}: no {fmt.name} ground-truth files found")
    return out


def _read_predictions(
    pred_dir: Path, gt_format: str, gt: dict[str, tuple[Path, list[Instance]]], gt_dir: Path
) -> dict[str, tuple[Path, list[Detection]]]:
    if not pred_dir.is_dir():
        raise ScoreError(f"{pred_dir}: prediction folder does not exist")
    fmt = get_format(gt_format)
    out: dict[str, tuple[Path, list[Detection]]] = {}
    for path in sorted(pred_dir.iterdir()):
        if path.name.startswith("."):
            continue  # .DS_Store and friends
        match = _PRED_NAME.fullmatch(path.name)
        if match is None or not path.is_file():
            raise ScoreError(
                f"{path}: not a prediction file (expected res_<image name>.txt, e.g. res_img_1.txt)"
            )
        key = fmt.image_key(f"{match.group(1)}.jpg")  # the image's pairing key, whatever its extension
        if key is None or key not in gt:
            raise ScoreError(f"{path}: no ground truth for this image in {gt_dir}")
        if key in out:
            raise ScoreError(f"{path}: same image as {out[key][0].name}")
        out[key] = (path, read_submission(path))
    return out


def _image_entry(res: ImageResult, gt_path: Path, pred_path: Path | None) -> dict:
    return {
        "gt_file": gt_path.name,
        "pred_file": pred_path.name if pred_path else None,
        "precision": res.precision,
        "recall": res.recall,
        "hmean": res.hmean,
        "gt_care": res.gt_care,
        "det_care": res.det_care,
        "matched_gt": res.matched_gt,
        "matched_det": res.matched_det,
    }


def _sweep_dict(sweep: SweepResult) -> dict:
    rows = [
        {"threshold": r.threshold, "precision": r.precision, "recall": r.recall, "hmean": r.hmean, **r.counts}
        for r in sweep.rows
    ]
    return {
        "rows": rows,
        "best_threshold": sweep.best_threshold,
        "best_hmean": sweep.best_hmean,
        "note": sweep.note,
    }


def score_folders(
    gt_dir: str | Path,
    pred_dir: str | Path,
    protocol: str = "iou",
    gt_format: str = "icdar2015",
    sweep: bool = False,
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict:
    """Score a prediction folder against a ground-truth folder; a JSON-ready dict.

    Keys: protocol (its parameters), gt_format, precision, recall, hmean, counts, per_image (by image key),
    missing_predictions (image keys without a prediction file), and with `sweep` a `sweep` table.
    """
    try:
        proto = resolve_protocol(protocol)
    except ValueError as err:
        raise ScoreError(str(err)) from None
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    gt = _read_ground_truth(gt_dir, gt_format)
    preds = _read_predictions(pred_dir, gt_format, gt, gt_dir)
    keys = sorted(gt, key=_natural)
    pairs = [(gt[k][1], preds[k][1] if k in preds else []) for k in keys]
    result: EvalResult = evaluate(pairs, proto)
    out = {
        "protocol": dataclasses.asdict(proto),
        "gt_format": gt_format,
        "precision": result.precision,
        "recall": result.recall,
        "hmean": result.hmean,
        "counts": result.counts,
        "per_image": {
            k: _image_entry(res, gt[k][0], preds[k][0] if k in preds else None)
            for k, res in zip(keys, result.per_image, strict=True)
        },
        "missing_predictions": [k for k in keys if k not in preds],
    }
    if sweep:
        out["sweep"] = _sweep_dict(threshold_sweep(pairs, thresholds, proto))
    return out


# --------------------------------------------------------------------------------------------- CLI


def _table(result: dict) -> str:
    c = result["counts"]
    lines = [
        f"protocol   {result['protocol']['kind']}",
        f"images     {c['images']} ({len(result['missing_predictions'])} without a prediction file)",
        f"precision  {result['precision']:.4f}  ({c['matched_det']:g} / {c['det_care']} care detections)",
        f"recall     {result['recall']:.4f}  ({c['matched_gt']:g} / {c['gt_care']} care ground truths)",
        f"hmean      {result['hmean']:.4f}",
    ]
    if "sweep" in result:
        sw = result["sweep"]
        lines += ["", "score >=  precision  recall  hmean"]
        lines += [
            f"{r['threshold']:<9.2f} {r['precision']:.4f}     {r['recall']:.4f}  {r['hmean']:.4f}"
            for r in sw["rows"]
        ]
        lines += [
            f"best hmean {sw['best_hmean']:.4f} at score >= {sw['best_threshold']:.2f}",
            f"note: {sw['note']}",
        ]
    return "\n".join(lines)


def score_command(
    gt: Path = typer.Option(..., "--gt", help="Ground-truth folder (IC15: gt_img_<id>.txt files)."),
    pred: Path = typer.Option(
        ..., "--pred", help="Prediction folder of res_<image name>.txt files (RRC form)."
    ),
    protocol: str = typer.Option(
        "iou", "--protocol", help="iou (ICDAR 2015 hmean-IoU) or deteval (IC13 DetEval)."
    ),
    gt_format: str = typer.Option(
        "icdar2015",
        "--gt-format",
        help="Ground-truth format: icdar2013, icdar2015, td500, ctw1500, totaltext, mlt17.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (with per_image) on stdout."),
    sweep: bool = typer.Option(
        False,
        "--sweep",
        help="Also sweep score thresholds 0.3..0.9 (the best one is optimistic: picked on this set).",
    ),
) -> None:
    """Score predictions in the RRC submission form against ground truth (precision, recall, hmean)."""
    try:
        result = score_folders(gt, pred, protocol=protocol, gt_format=gt_format, sweep=sweep)
    except ScoreError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result) if json_out else _table(result))
