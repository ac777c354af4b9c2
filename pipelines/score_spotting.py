"""`tcm score --protocol e2e|word-spotting|totaltext-e2e`: spotting folders scored by tcm.evaluation_e2e.

IC15 (`e2e`, `word-spotting`): ground truth `gt_img_<N>.txt`, predictions `res_img_<N>.txt`, both in the
task 4.4 line form `x1,y1,...,x4,y4,transcription` (`--confidences`: `...,y4,confidence,transcription`).
Total-Text (`totaltext-e2e`): AdelaiDet's polygon form `x1,y1,...,xn,yn,####transcription`; predictions named
`<N>.txt` (AdelaiDet writes `0000012.txt`) or `res_img_<N>.txt`; ground truth in the same form (`<N>.txt`,
`###` don't care) or, with `--gt-format totaltext|ctw1500|...`, any dataset format the readers know (their
don't-care flag kept). Images pair by the number N (leading zeros ignored).

Every file in the prediction folder must be a prediction file of an image that has ground truth (the script's
"ZIP entry not valid" / "not present in GT"); an image without a prediction file counts its GT as missed.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from tcm.data.formats import get_format
from tcm.evaluation import PackedPolygons
from tcm.evaluation_e2e import (
    SpottingFile,
    SpottingFileError,
    SpottingImage,
    evaluate_spotting,
    parse_adet,
    parse_rrc_e2e,
    resolve_spotting,
)
from tcm.types import AnnotationError

_IC15_GT = re.compile(r"gt_img_([0-9]+)\.txt")  # RRC GT_SAMPLE_NAME_2_ID
_IC15_PRED = re.compile(r"res_img_([0-9]+)\.txt")  # RRC DET_SAMPLE_NAME_2_ID
_ADET_NAME = re.compile(r"(?:res_img_)?([0-9]+)\.txt")  # AdelaiDet `([0-9]+).txt` (or the RRC's name)


_EMPTY = PackedPolygons(np.zeros((0, 2)), np.zeros(0, dtype=np.int64))
_NO_LINES = np.zeros(0, dtype=np.int64)


class SpottingScoreError(ValueError):
    """Bad spotting input; the message names the file (and line)."""


def _key(match: re.Match[str]) -> str:
    return str(int(match.group(1)))  # `0000012` and `12` are the same image


def _read(path: Path) -> str:
    from pipelines.score import read_text  # one UTF-8 / BOM rule for every score protocol

    return read_text(path)


def _parse(path: Path, totaltext: bool, confidences: bool) -> SpottingFile:
    try:
        text = _read(path)
        return parse_adet(text, str(path)) if totaltext else parse_rrc_e2e(text, str(path), confidences)
    except SpottingFileError as err:
        raise SpottingScoreError(str(err)) from None
    except ValueError as err:  # ScoreError from read_text: names the file already
        raise SpottingScoreError(str(err)) from None


def _ground_truth(
    gt_dir: Path, protocol: str, gt_format: str | None
) -> dict[str, tuple[Path, SpottingImage]]:
    """Ground truth by image key, as SpottingImage objects without detections yet."""
    if not gt_dir.is_dir():
        raise SpottingScoreError(f"{gt_dir}: ground-truth folder does not exist")
    totaltext = protocol == "totaltext-e2e"
    out: dict[str, tuple[Path, SpottingImage]] = {}
    if gt_format is not None:  # a dataset format of tcm.data.formats
        try:
            fmt = get_format(gt_format)
        except ValueError as err:
            raise SpottingScoreError(str(err)) from None
    for path in sorted(p for p in gt_dir.iterdir() if p.is_file()):
        if gt_format is not None:
            raw_key = fmt.annotation_key(path.name)
            if raw_key is None:
                continue
            key = str(int(raw_key)) if raw_key.isdigit() else raw_key
            try:
                instances = fmt.parse(path.read_bytes(), str(path))
            except AnnotationError as err:
                raise SpottingScoreError(str(err)) from None
            polygons = PackedPolygons.of([g.points for g in instances])
            texts = [g.text for g in instances]
            ignore = np.array([g.ignore for g in instances], dtype=bool).reshape(-1)  # (G,) the reader's flag
        else:
            match = (_ADET_NAME if totaltext else _IC15_GT).fullmatch(path.name)
            if match is None:
                continue  # images or notes beside the annotations
            key = _key(match)
            parsed = _parse(path, totaltext, confidences=False)
            polygons, texts = parsed.polygons, parsed.texts
            ignore = np.zeros(len(texts), dtype=bool)  # (G,) no reader flag: only `###` is don't care
        if key in out:
            raise SpottingScoreError(f"{path}: same image as {out[key][0].name}")
        out[key] = (path, SpottingImage(polygons, texts, ignore, _EMPTY, [], np.zeros(0), _NO_LINES))
    if not out:
        expected = "gt_img_<N>.txt" if not totaltext else "<N>.txt"
        raise SpottingScoreError(f"{gt_dir}: no ground-truth files found (expected {expected})")
    return out


def _predictions(
    pred_dir: Path, protocol: str, confidences: bool, gt: dict, gt_dir: Path
) -> dict[str, tuple[Path, SpottingFile]]:
    if not pred_dir.is_dir():
        raise SpottingScoreError(f"{pred_dir}: prediction folder does not exist")
    totaltext = protocol == "totaltext-e2e"
    out: dict[str, tuple[Path, SpottingFile]] = {}
    for path in sorted(pred_dir.iterdir()):
        if path.name.startswith("."):
            continue  # .DS_Store and friends
        match = (_ADET_NAME if totaltext else _IC15_PRED).fullmatch(path.name)
        if match is None or not path.is_file():
            expected = "<N>.txt or res_img_<N>.txt" if totaltext else "res_img_<N>.txt"
            raise SpottingScoreError(f"{path}: not a prediction file (expected {expected})")
        key = _key(match)
        if key not in gt:
            raise SpottingScoreError(f"{path}: no ground truth for this image in {gt_dir}")
        if key in out:
            raise SpottingScoreError(f"{path}: same image as {out[key][0].name}")
        out[key] = (path, _parse(path, totaltext, confidences))
    return out


def _image(gt: SpottingImage, pred: SpottingFile | None) -> SpottingImage:
    if pred is None:
        return gt
    return dataclasses.replace(
        gt, det=pred.polygons, det_texts=pred.texts, scores=pred.scores, det_lines=pred.lines
    )


def _natural(key: str) -> tuple[int, int | str]:
    return (0, int(key)) if key.isdigit() else (1, key)


def score_spotting(
    gt_dir: str | Path,
    pred_dir: str | Path,
    protocol: str = "e2e",
    confidences: bool = False,
    gt_format: str | None = None,
) -> dict:
    """Score a spotting submission folder; a JSON-ready dict (precision, recall, hmean, per_image, ...)."""
    try:
        resolve_spotting(protocol)  # an unknown protocol is a SpottingScoreError before any file is read
    except ValueError as err:
        raise SpottingScoreError(str(err)) from None
    if gt_format is not None and protocol != "totaltext-e2e":
        raise SpottingScoreError(
            "--gt-format applies to --protocol totaltext-e2e (IC15 GT is read as the script)"
        )
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    gt = _ground_truth(gt_dir, protocol, gt_format)
    preds = _predictions(pred_dir, protocol, confidences, gt, gt_dir)
    named_gt = {k: (path.name, image) for k, (path, image) in gt.items()}
    named_preds = {k: (path.name, parsed) for k, (path, parsed) in preds.items()}
    return score_images(named_gt, named_preds, protocol, confidences)


def score_images(
    gt: dict[str, tuple[str, SpottingImage]],
    preds: dict[str, tuple[str, SpottingFile]],
    protocol: str = "e2e",
    confidences: bool = False,
) -> dict:
    """The scores of in-memory spotting results, the one scoring function behind `tcm score` (its folders read
    into these dicts) and `tcm evaluate --rec` (rows and spots): image key -> (ground-truth name, the image's
    ground truth without detections) and key -> (prediction name, parsed submission lines). Every prediction
    key must have ground truth; a GT image without one counts all its words as missed."""
    proto = resolve_spotting(protocol)
    if unknown := sorted(set(preds) - set(gt)):
        raise SpottingScoreError(f"predictions without ground truth: {', '.join(unknown[:5])}")
    keys = sorted(gt, key=_natural)
    images = [_image(gt[k][1], preds[k][1] if k in preds else None) for k in keys]
    result = evaluate_spotting(images, proto, confidences=confidences)
    per_image = {}
    for k, im, res in zip(keys, images, result.per_image, strict=True):
        lines = im.det_lines[res.order]  # (D,) file line of each detection in matching order
        per_image[k] = {
            "gt_file": gt[k][0],
            "pred_file": preds[k][0] if k in preds else None,
            "precision": res.precision,
            "recall": res.recall,
            "hmean": res.hmean,
            "gt_care": res.gt_care,
            "det_care": res.det_care,
            "hits": res.hits,
            "pairs": [
                {
                    "gt": g,
                    "det_line": int(lines[d]),
                    "gt_text": res.gt_compared[g],
                    "det_text": res.det_texts[d],
                    "correct": ok,
                }
                for g, d, ok in res.pairs
            ],
        }
    out = {
        "protocol": dataclasses.asdict(proto) | {"name": protocol, "confidences": confidences},
        "precision": result.precision,
        "recall": result.recall,
        "hmean": result.hmean,
        "counts": result.counts,
        "detection_only": result.detection_only,
        "per_image": per_image,
        "missing_predictions": [k for k in keys if k not in preds],
        "misoriented": {
            preds[k][0]: preds[k][1].misoriented for k in keys if k in preds and preds[k][1].misoriented
        },
    }
    if confidences:
        out["ap"] = result.ap
    return out


def spotting_summary(result: dict) -> str:
    c, det = result["counts"], result["detection_only"]
    lines = [
        f"protocol   {result['protocol']['name']}"
        + (" (confidences)" if result["protocol"]["confidences"] else ""),
        f"images     {c['images']} ({len(result['missing_predictions'])} without a prediction file)",
        f"precision  {result['precision']:.4f}  ({c['hits']} / {c['det_care']} care detections read right)",
        f"recall     {result['recall']:.4f}  ({c['hits']} / {c['gt_care']} care ground truths)",
        f"hmean      {result['hmean']:.4f}",
    ]
    if "ap" in result:
        lines.append(f"AP         {result['ap']:.4f}")
    lines.append(
        f"detection only (text ignored, only ### don't care): P {det['precision']:.4f}  R {det['recall']:.4f}  "
        f"H {det['hmean']:.4f}"
    )
    return "\n".join(lines)
