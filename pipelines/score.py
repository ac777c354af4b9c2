"""`tcm score`: evaluate predictions against ground truth. Detection (`iou`, `deteval`) here; end to end
(`e2e`, `word-spotting`, `totaltext-e2e`) in pipelines/score_spotting.py; recognition in
pipelines/score_words.py; `score_command` dispatches. User docs: docs/scoring.md.

Detection predictions: one file per image, `res_<image name>.txt` (`res_img_12.txt` for `img_12.jpg`), one
detection a line: 2k integer coordinates x1,y1,...,xk,yk (k >= 4: at least 8 coordinates), optionally followed
by a confidence. An odd number of fields means the last one is the confidence. Counter-clockwise corners are
accepted and turned clockwise, and counted in the result (the RRC script would reject them).
Ground truth: any dataset format the readers know
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

from pipelines import score_batch
from tcm.data.formats import get_format
from tcm.evaluation import (
    THRESHOLDS,
    EvalResult,
    ImageResult,
    PackedImage,
    PackedPolygons,
    SweepResult,
    clockwise,
    clockwise_packed,
    evaluate,
    resolve_protocol,
    threshold_sweep,
)
from tcm.types import AnnotationError, Detection

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
    A triangle gets its last corner written twice (same region): every line holds >= 8 coordinates, the least
    `read_submission` accepts.
    """
    rows = []
    for i, det in enumerate(dets):
        pts = np.asarray(det.points, dtype=np.float64).reshape(-1, 2)  # (P, 2)
        if len(pts) < 3 or not np.isfinite(pts).all():
            raise ValueError(f"{path}: detection {i} needs >= 3 finite points, got {pts.tolist()}")
        corners = np.rint(clockwise(pts)).astype(np.int64)  # (P, 2)
        if len(corners) == 3:
            corners = np.concatenate([corners, corners[-1:]])  # (4, 2) repeated corner: area unchanged
        row = ",".join(str(v) for v in corners.reshape(-1).tolist())  # x1, y1, x2, y2, ...
        rows.append(f"{row},{float(det.score)!r}" if scores else row)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{r}\n" for r in rows), encoding="utf-8")
    return out


@dataclass
class Submission:
    """One `res_*.txt` file, parsed: clockwise polygons, confidences, and how many lines were reversed."""

    polygons: PackedPolygons  # N polygons, corners made clockwise
    scores: np.ndarray  # (N,) float64; 1.0 where the line has no confidence
    lines: np.ndarray  # (N,) int64: the 1-based line each polygon came from
    reversed: int  # lines given counter-clockwise (the RRC script would refuse them)

    def detections(self) -> list[Detection]:
        flat, start = self.polygons.flat, np.cumsum(self.polygons.sizes) - self.polygons.sizes
        return [
            Detection(flat[a : a + n], float(score))  # (P, 2) view of the file's corner array
            for a, n, score in zip(start.tolist(), self.polygons.sizes.tolist(), self.scores.tolist(), strict=True)
        ]


def read_text(path: Path) -> str:
    """A UTF-8 file's text without its BOM (the RRC strips one); ScoreError naming file and line otherwise."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ScoreError(f"{path}: cannot read ({err.strerror})") from None
    return _decode(data, path)


def _decode(data: bytes, path: Path) -> str:
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = data[: err.start].count(b"\n") + 1
        raise ScoreError(f"{path}:{line_no}: invalid UTF-8 at byte {err.start}") from None


def parse_submission(text: str, source: str) -> Submission:
    """Parse a detection submission: `x1,y1,...,xk,yk[,confidence]` lines, k >= 4, integer coordinates.

    Plain Python per line (str.split and int, no numpy call per line) and one vectorised orientation check
    for the whole file: a 100-line file costs about as much as a few numpy calls.
    """
    strict_ints = text.isascii() and "_" not in text  # then int() accepts exactly [+-]digits with spaces
    if strict_ints:
        fast = _parse_uniform(text)
        if fast is not None:
            return fast
    coords: list[int] = []
    sizes: list[int] = []
    scores: list[float] = []
    line_nos: list[int] = []
    for line_no, raw in enumerate(text.split("\n"), start=1):
        fields = raw.split(",")
        n = len(fields)
        if n == 1 and not raw.strip():
            continue  # blank line
        score = 1.0  # no confidence column: every detection is kept at any threshold
        if n % 2 == 1:
            score = _confidence(fields.pop(), f"{source}:{line_no}")
            n -= 1
        if n < 8:
            raise ScoreError(
                f"{source}:{line_no}: expected x1,y1,...,xk,yk with k >= 4 points (8 or more integer "
                f"coordinates, optionally then a confidence), found {n} coordinate field(s)"
            )
        try:
            if not strict_ints:
                raise ValueError
            coords.extend(map(int, fields))
        except ValueError:
            coords.extend(_integers(fields, f"{source}:{line_no}"))
        sizes.append(n // 2)
        scores.append(score)
        line_nos.append(line_no)
    flat = np.array(coords, dtype=np.float64).reshape(-1, 2)  # (sum P_i, 2)
    packed, ccw = clockwise_packed(PackedPolygons(flat, np.array(sizes, dtype=np.int64)))
    scores_ = np.array(scores, dtype=np.float64)  # (N,)
    return Submission(packed, scores_, np.array(line_nos, dtype=np.int64), int(ccw.sum()))


def _parse_uniform(text: str) -> Submission | None:
    """The common file, parsed with a few C-level calls: every line the same number of fields, ASCII, no blank
    line inside; None for anything else (the line-by-line parser then gives the exact error or result)."""
    lines = text.rstrip("\r\n").split("\n")
    if not lines[0].strip():
        return None
    commas = lines[0].count(",")
    if any(line.count(",") != commas for line in lines):
        return None
    N, n_fields = len(lines), commas + 1
    n_coords = n_fields - n_fields % 2  # an odd count: the last field is the confidence
    if n_coords < 8:
        return None
    scores = np.ones(N)  # (N,) no confidence column: kept at any threshold
    if n_fields % 2:
        fields = ",".join(lines).split(",")  # (N * n_fields,) row-major
        try:
            scores = np.array(list(map(float, fields[n_coords::n_fields])))  # (N,) the last column
        except ValueError:
            return None
        del fields[n_coords::n_fields]  # (N * n_coords,) the coordinates
    else:
        fields = ",".join(lines).split(",")  # (N * n_coords,) row-major
    if not np.isfinite(scores).all():
        return None
    try:  # on ASCII text without `_`, int() accepts exactly the RRC's [+-]digits (spaces around allowed)
        coords = np.array(list(map(int, fields)), dtype=np.float64)  # (N * n_coords,)
    except ValueError:
        return None
    flat = coords.reshape(-1, 2)  # (N * n_coords / 2, 2)
    packed, ccw = clockwise_packed(PackedPolygons(flat, np.full(N, n_coords // 2, dtype=np.int64)))
    return Submission(packed, scores, np.arange(N, dtype=np.int64) + 1, int(ccw.sum()))


def _confidence(text: str, where: str) -> float:
    try:
        score = float(text)
    except ValueError:
        raise ScoreError(f"{where}: confidence {text.strip()!r} is not a number") from None
    if not math.isfinite(score):
        raise ScoreError(f"{where}: confidence {text.strip()!r} is not finite")
    return score


def _integers(fields: Sequence[str], where: str) -> list[int]:
    """Integer coordinates, checked one by one (the slow path, for a message naming the bad field)."""
    values = []
    for i, text in enumerate(fields, start=1):
        text = text.strip()
        if not _INTEGER.fullmatch(text):
            raise ScoreError(f"{where}: coordinate {i} {text!r} is not an integer (RRC submissions use integers)")
        values.append(int(text))
    return values


def read_submission(path: str | Path) -> list[Detection]:
    """Detections of one `res_*.txt` file (corners made clockwise; score 1.0 when the line has none)."""
    path = Path(path)
    return parse_submission(read_text(path), str(path)).detections()


# --------------------------------------------------------------------------------------------- folders


def _natural(key: str) -> tuple[int, int | str]:
    """Sort `2` before `10`; non-numeric keys after numeric ones, alphabetically."""
    return (0, int(key)) if key.isdigit() else (1, key)


@dataclass
class GroundTruth:
    """One ground-truth file, packed for the evaluator."""

    path: Path
    polygons: PackedPolygons
    ignore: np.ndarray  # (G,) bool


# An ICDAR 2015 coordinate as tcm.data.formats reads it (ASCII decimal, optional exponent); a whole file's
# coordinates are checked by one match of _NUMBERS.
_NUMBER = r"[ \t]*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[ \t]*"
_NUMBERS = re.compile(rf"{_NUMBER}(?:,{_NUMBER})*", re.ASCII)


def _fast_icdar2015(text: str) -> GroundTruth | None:
    """IC15 lines `x1,...,y4,text` with one split per line and one check + conversion per file; None when
    anything is unusual (the format's own reader then gives the exact result or error)."""
    coords: list[str] = []
    ignore: list[bool] = []
    for raw in text.split("\n"):
        if not raw.strip():
            continue
        fields = raw.split(",", 8)
        if len(fields) != 9:
            return None
        coords += fields[:8]
        ignore.append(fields[8].removesuffix("\r").strip() == "###")  # the reader's don't-care rule
    joined = ",".join(coords)
    if coords and not _NUMBERS.fullmatch(joined):
        return None
    values = np.array(list(map(float, coords)), dtype=np.float64)  # (8 G,) checked by _NUMBERS above
    if not np.isfinite(values).all():
        return None
    G = len(ignore)
    return GroundTruth(Path(), PackedPolygons.quads(values.reshape(G, 4, 2)), np.array(ignore, dtype=bool))


def _read_ground_truth(gt_dir: Path, gt_format: str) -> dict[str, GroundTruth]:
    try:
        fmt = get_format(gt_format)
    except ValueError as err:
        raise ScoreError(str(err)) from None
    if not gt_dir.is_dir():
        raise ScoreError(f"{gt_dir}: ground-truth folder does not exist")
    keys: dict[str, Path] = {}
    for path in sorted(p for p in gt_dir.iterdir() if p.is_file()):
        key = fmt.annotation_key(path.name)
        if key is None:
            continue  # images or notes beside the annotations
        if key in keys:
            raise ScoreError(f"{path}: same image as {keys[key].name} (key {key!r})")
        keys[key] = path
    if not keys:
        raise ScoreError(f"{gt_dir}: no {fmt.name} ground-truth files found")
    raw = {path: path.read_bytes() for path in keys.values()}
    batch = score_batch.icdar2015_ground_truth(raw) if fmt.name == "icdar2015" else {}
    out: dict[str, GroundTruth] = {}
    for key, path in keys.items():
        out[key] = batch.get(path) or _ground_truth_file(fmt, path, raw[path])
    return out


def _ground_truth_file(fmt, path: Path, data: bytes) -> GroundTruth:
    """One GT file: the IC15 line fast path, else the format's own reader (which names a bad line)."""
    if fmt.name == "icdar2015":
        try:
            fast = _fast_icdar2015(data.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
        except UnicodeDecodeError:
            fast = None  # the reader names the line
        if fast is not None:
            return dataclasses.replace(fast, path=path)
    try:
        instances = fmt.parse(data, str(path))
    except AnnotationError as err:
        raise ScoreError(str(err)) from None
    return GroundTruth(
        path,
        PackedPolygons.of([g.points for g in instances]),
        np.array([g.ignore for g in instances], dtype=bool).reshape(-1),  # (G,)
    )


def _read_predictions(
    pred_dir: Path, gt_format: str, gt: dict[str, GroundTruth], gt_dir: Path
) -> dict[str, tuple[Path, Submission]]:
    if not pred_dir.is_dir():
        raise ScoreError(f"{pred_dir}: prediction folder does not exist")
    fmt = get_format(gt_format)
    keys: dict[str, Path] = {}
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
        if key in keys:
            raise ScoreError(f"{path}: same image as {keys[key].name}")
        keys[key] = path
    raw = {}
    for path in keys.values():
        try:
            raw[path] = path.read_bytes()
        except OSError as err:
            raise ScoreError(f"{path}: cannot read ({err.strerror})") from None
    batch = score_batch.submissions(raw)  # every plain file at once; the rest line by line
    return {
        key: (path, batch.get(path) or parse_submission(_decode(raw[path], path), str(path)))
        for key, path in keys.items()
    }


_NO_DETECTIONS = Submission(
    PackedPolygons(np.zeros((0, 2)), np.zeros(0, dtype=np.int64)), np.zeros(0), np.zeros(0, dtype=np.int64), 0
)


def _packed_image(gt: GroundTruth, sub: Submission) -> PackedImage:
    return PackedImage(gt=gt.polygons, gt_ignore=gt.ignore, det=sub.polygons, scores=sub.scores)


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
    pairs = [_packed_image(gt[k], preds[k][1] if k in preds else _NO_DETECTIONS) for k in keys]
    result: EvalResult = evaluate(pairs, proto, keep_iou=False)  # the report never shows the matrices
    out = {
        "protocol": dataclasses.asdict(proto),
        "gt_format": gt_format,
        "precision": result.precision,
        "recall": result.recall,
        "hmean": result.hmean,
        "counts": result.counts,
        "per_image": {
            k: _image_entry(res, gt[k].path, preds[k][0] if k in preds else None)
            for k, res in zip(keys, result.per_image, strict=True)
        },
        "missing_predictions": [k for k in keys if k not in preds],
        "counter_clockwise": {path.name: sub.reversed for path, sub in preds.values() if sub.reversed},
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


DETECTION = ("iou", "deteval")
SPOTTING = ("e2e", "word-spotting", "totaltext-e2e")


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1) from None


def _warn_orientation(counts: dict[str, int], official: str) -> None:
    if counts:
        total = sum(counts.values())
        files = ", ".join(f"{name} ({n})" for name, n in list(counts.items())[:5])
        more = f" and {len(counts) - 5} more file(s)" if len(counts) > 5 else ""
        typer.echo(
            f"warning: {total} polygon(s) in the other orientation were normalised ({official} would refuse "
            f"them): {files}{more}",
            err=True,
        )


def score_command(
    gt: Path = typer.Option(
        ...,
        "--gt",
        help="Ground truth: a folder (IC15 gt_img_<N>.txt; totaltext-e2e <N>.txt) or, for recognition, a task "
        "4.3 label file.",
    ),
    pred: Path = typer.Option(
        ...,
        "--pred",
        help="Predictions: a folder of res_img_<N>.txt files (totaltext-e2e: <N>.txt) or, for recognition, a "
        "task 4.3 label file.",
    ),
    protocol: str = typer.Option(
        "iou",
        "--protocol",
        help="iou (ICDAR 2015 hmean-IoU) | deteval (IC13 DetEval) | e2e (IC15 end to end, RRC E2E_iou v1.1) | "
        "word-spotting (IC15, the same script's dictionary rule) | totaltext-e2e (polygons, word-spotting rule, "
        "as AdelaiDet) | recognition (cropped words: accuracy, 1 - NED). Counter-clockwise quads are "
        "normalised with a warning: the official scripts refuse them.",
    ),
    gt_format: str = typer.Option(
        None,
        "--gt-format",
        help="Ground-truth format: icdar2013, icdar2015 (default for detection), td500, ctw1500, totaltext, "
        "mlt17; with totaltext-e2e, a dataset format instead of AdelaiDet's <N>.txt polygon form.",
        show_default=False,
    ),
    confidences: bool = typer.Option(
        False,
        "--confidences",
        help="e2e / word-spotting: lines are x1,...,y4,confidence,transcription; detections are sorted by "
        "confidence (the official CONFIDENCES option) and AP is reported.",
    ),
    charset: int = typer.Option(
        36,  # the STR benchmarks' test charset (clip4str.md §6)
        "--charset",
        help="recognition: 36 ([0-9a-z], the benchmark protocol), 62 (cased) or 94 (cased + punctuation).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (with per_image) on stdout."),
    sweep: bool = typer.Option(
        False,
        "--sweep",
        help="Detection: also sweep score thresholds 0.3..0.9 (the best one is optimistic: picked on this set).",
    ),
) -> None:
    """Score predictions against ground truth: detection (P / R / H), end to end, word spotting, recognition.

    Examples: tcm score --gt gts/ --pred submission/; tcm score --protocol e2e --gt gts/ --pred res/ --json;
    tcm score --protocol recognition --gt gt.txt --pred pred.txt --charset 36. See docs/scoring.md.
    """
    if protocol == "recognition":
        from pipelines.score_words import WordScoreError, recognition_summary, score_recognition

        try:
            result = score_recognition(gt, pred, charset)
        except WordScoreError as err:
            _fail(err)
        typer.echo(json.dumps(result) if json_out else recognition_summary(result) + "\n\n" + result["table"])
        return
    if protocol in SPOTTING:
        from pipelines.score_spotting import SpottingScoreError, score_spotting, spotting_summary

        try:
            result = score_spotting(gt, pred, protocol, confidences=confidences, gt_format=gt_format)
        except SpottingScoreError as err:
            _fail(err)
        official = "AdelaiDet's evaluator" if protocol == "totaltext-e2e" else "the RRC script"
        _warn_orientation(result["misoriented"], official)
        typer.echo(json.dumps(result) if json_out else spotting_summary(result))
        return
    if protocol not in DETECTION:
        choices = ", ".join((*DETECTION, *SPOTTING, "recognition"))
        _fail(ScoreError(f"unknown protocol {protocol!r}: use one of {choices}"))
    try:
        result = score_folders(gt, pred, protocol=protocol, gt_format=gt_format or "icdar2015", sweep=sweep)
    except ScoreError as err:
        _fail(err)
    _warn_orientation(result["counter_clockwise"], "the RRC script")
    typer.echo(json.dumps(result) if json_out else _table(result))
