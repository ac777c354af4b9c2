"""`tcm score --protocol recognition`: cropped-word predictions against ground truth, both in the ICDAR 2015
task 4.3 form (`word_1.png, "text"`, optional confidence), scored by tcm.evaluation_str.

A GT word without a prediction line reads as an empty prediction (wrong, NED 1). A prediction for a word the GT
does not have, a word predicted twice, or a malformed line is an error naming the file and the line. GT words
dropped by the label preprocessing (longer than 25, empty after the charset adapter) are not counted; the
result says how many and why.
"""

from __future__ import annotations

from pathlib import Path

from tcm.data.formats import words43
from tcm.evaluation_str import format_table, results_table, score_words
from tcm.types import AnnotationError


class WordScoreError(ValueError):
    """Bad recognition-scoring input; the message names the file (and line)."""


def _labels(path: Path) -> list[words43.WordLabel]:
    if not path.is_file():
        raise WordScoreError(f'{path}: no such label file (task 4.3 form: word_<n>.png, "text")')
    try:
        return words43.parse(path.read_bytes(), str(path))
    except AnnotationError as err:
        raise WordScoreError(str(err)) from None


def score_recognition(gt: str | Path, pred: str | Path, charset: int = 36) -> dict:
    """Score a 4.3 prediction file against a 4.3 GT file; a JSON-ready dict."""
    gt_path, pred_path = Path(gt), Path(pred)
    gt_labels = _labels(gt_path)
    pred_labels = _labels(pred_path)
    names = {label.name for label in gt_labels}
    for label in pred_labels:
        if label.name not in names:
            raise WordScoreError(f"{pred_path}:{label.line}: {label.name} is not a word of {gt_path}")
    predictions = {label.name: label.text for label in pred_labels}
    try:
        result = score_words(
            ((label.name, label.text) for label in gt_labels), predictions, charset, dataset=gt_path.name
        )
    except ValueError as err:
        raise WordScoreError(str(err)) from None
    return {
        "protocol": {"kind": "recognition", "charset": charset},
        "accuracy": result.accuracy,
        "one_minus_ned": result.one_minus_ned,
        "n": result.n,
        "correct": sum(w.correct for w in result.per_word),
        "missing_predictions": [w.name for w in result.per_word if not w.has_prediction],
        "dropped": {"count": len(result.dropped), "reasons": result.dropped_reasons, "words": result.dropped},
        "per_word": [
            {"name": w.name, "gt": w.gt, "pred": w.pred, "correct": w.correct, "ned": w.ned}
            for w in result.per_word
        ],
        "table": format_table(results_table([result])),
    }


def recognition_summary(result: dict) -> str:
    dropped = result["dropped"]
    reasons = ", ".join(f"{n} {why}" for why, n in dropped["reasons"].items()) or "none"
    return "\n".join(
        [
            f"protocol   recognition (charset {result['protocol']['charset']})",
            f"words      {result['n']} counted ({len(result['missing_predictions'])} without a prediction line); "
            f"{dropped['count']} GT word(s) dropped by preprocessing: {reasons}",
            f"accuracy   {result['accuracy']:.4f}  ({result['correct']} / {result['n']})",
            f"1 - NED    {result['one_minus_ned']:.4f}",
        ]
    )
