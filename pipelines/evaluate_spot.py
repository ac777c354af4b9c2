"""`tcm evaluate --model DET --rec REC`: a detector + recogniser pair scored end to end on ingested rows.

    unified rows (id, image, polygons, ignore, texts)
      -> {bytes, path = row id, gt}                                   one Ray Data task per shard
      -> pipelines.spot.spot_dataset: the `tcm spot` actors          detect, NMS, crop, read; GT words cropped
                                                                      (tcm.data.crops) and read by the same actors
      -> driver: end-to-end and word-spotting scores (pipelines.score_spotting.score_images, `tcm score`'s
         scorer), word accuracy on the GT crops (the recognition task's score), spot overlays

The predictions are scored as submitted: each image's spots go through `submission_lines` (integer corners,
a non-quad as its min-area rectangle) and the task 4.4 parser, in memory, so the figures are the ones
`tcm score` gives on the `res_*.txt` files `tcm spot` writes for the same models and images.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.spot import ImageSpots, SpotSettings

log = logging.getLogger(__name__)

SPOT_COLUMNS = ["id", "image", "polygons", "ignore", "texts"]  # what spotting evaluation reads of a unified row
PROTOCOLS = {"e2e": "e2e", "word_spotting": "word-spotting"}  # metric prefix -> tcm score protocol


@dataclass
class SpottedRows:
    """The pipeline's answer for every row: spots, the row's ground truth, the readings of its GT crops."""

    results: list[ImageSpots]  # by row id
    gt: dict[str, dict[str, Any]]  # row id -> {"polygons": [flat], "texts", "ignore"}
    readings: dict[str, dict[str, Any]]  # row id -> {"index", "text", "confidence", "degenerate"}


def spot_input_batch(batch: Any) -> dict[str, np.ndarray]:
    """Unified rows (pyarrow) -> the spot stages' input: the encoded image, its id as the name, the GT as JSON."""
    from pipelines.spot import gt_json

    cols = batch.to_pydict()
    texts = cols.get("texts") or [[] for _ in cols["id"]]
    gt = [gt_json(p or [], [t or "" for t in (tx or [""] * len(p or []))], i or [])
          for p, tx, i in zip(cols["polygons"], texts, cols["ignore"], strict=True)]  # fmt: skip
    return {
        "bytes": np.asarray(cols["image"], dtype=object),
        "path": np.asarray([str(i) for i in cols["id"]], dtype=object),
        "gt": np.asarray(gt, dtype=object),
    }


def spot_rows(
    det: str,
    rec: str,
    refs: Sequence[Any],
    settings: SpotSettings,
    *,
    tracking_uri: str | None,
    seed: int = 0,
    num_workers: int = 1,
) -> SpottedRows:
    """Run the `tcm spot` stages over the rows of every ref (ingested folder + split); `num_workers` read tasks."""
    import pickle

    import ray.data

    from pipelines.augment import select_rows
    from pipelines.spot import spot_dataset

    parts = [
        select_rows([(ref.uri, 1.0)], ref.split, seed=seed, num_workers=num_workers, cpus_per_task=settings.crop_cpus,
                    columns=SPOT_COLUMNS, shuffle_files=False)  # fmt: skip
        for ref in refs
    ]
    rows = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    rows = rows.map_batches(
        spot_input_batch, batch_format="pyarrow", batch_size=settings.batch_size, num_cpus=settings.crop_cpus,
        compute=ray.data.TaskPoolStrategy(size=num_workers),
    )  # fmt: skip
    out = spot_dataset(rows, det, rec, settings, tracking_uri=tracking_uri, root=None)
    results, gt, readings = [], {}, {}
    for row in out.iter_rows():
        result: ImageSpots = pickle.loads(row["result"])
        results.append(result)
        gt[result.name] = json.loads(row["gt"])
        readings[result.name] = json.loads(row["gt_readings"])
        if len(results) % 50 == 0:
            log.info("spotted %d rows", len(results))
    if len(gt) != len(results):
        raise ValueError(f"row ids are not unique across {', '.join(f'{r.uri}#{r.split}' for r in refs)}")
    return SpottedRows(sorted(results, key=lambda r: r.name), gt, readings)


# ------------------------------------------------------------------------------------------------ scoring


def spotting_inputs(spotted: SpottedRows, polygons: bool) -> tuple[dict, dict]:
    """(ground truth, predictions) by row id, as `score_images` takes them: predictions parsed back from the
    submission lines `tcm spot` would write for them (task 4.4 quads, or AdelaiDet polygons)."""
    from pipelines.spot import submission_lines
    from tcm.evaluation_e2e import parse_adet, parse_rrc_e2e, spotting_image

    gt = {
        rid: (rid, spotting_image([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in g["polygons"]],  # (P, 2)
                                  g["texts"], g["ignore"], []))  # fmt: skip
        for rid, g in spotted.gt.items()
    }
    preds = {}
    for r in spotted.results:
        if r.error is not None:
            continue  # undecodable: no submission file, its words count as missed
        text = submission_lines(r.spots, polygons)
        preds[r.name] = (r.name, parse_adet(text, r.name) if polygons else parse_rrc_e2e(text, r.name))
    return gt, preds


def recognition_rows(spotted: SpottedRows) -> list[dict[str, Any]]:
    """One row per read GT word crop, in the recognition task's per-word form (id `<row id>#<instance>`)."""
    rows = []
    for rid, read in sorted(spotted.readings.items()):
        texts = spotted.gt[rid]["texts"]
        for i, pred, conf in zip(read["index"], read["text"], read["confidence"], strict=True):
            rows.append({"id": f"{rid}#{i}", "dataset": rid.split("/")[0], "gt": texts[i], "pred": pred,
                         "confidence": float(conf)})  # fmt: skip
    return rows


def score_spotted(spotted: SpottedRows, polygons: bool, cfg: Any, folder: Path | None) -> dict[str, float]:
    """e2e/*, word_spotting/* and recognition/* metrics; with `folder`, the score JSONs and per-word files."""
    from pipelines.score_spotting import score_images
    from pipelines.tasks.recognition import RecognitionTask

    gt, preds = spotting_inputs(spotted, polygons)
    metrics: dict[str, float] = {}
    for prefix, protocol in PROTOCOLS.items():
        scored = score_images(gt, preds, protocol)
        metrics |= {f"{prefix}/{k}": float(scored[k]) for k in ("hmean", "precision", "recall")}
        if folder is not None:
            (folder / "spotting").mkdir(parents=True, exist_ok=True)
            (folder / "spotting" / f"{prefix}.json").write_text(json.dumps(scored, indent=2))
    words_rows = recognition_rows(spotted)
    words = {"accuracy": 0.0, "one_minus_ned": 0.0, "words": 0.0}  # no transcribed GT word: nothing read
    if words_rows:
        words = RecognitionTask().score(words_rows, cfg, None if folder is None else folder / "recognition")
    metrics |= {f"recognition/{k}": float(v) for k, v in words.items()}
    degenerate = Counter()
    for read in spotted.readings.values():
        degenerate.update(read["degenerate"])
    metrics["recognition/degenerate"] = float(sum(degenerate.values()))  # GT words that could not be cropped
    return metrics


def draw_overlays(
    spotted: SpottedRows, images: Callable[[Sequence[str]], Mapping[str, np.ndarray]], out: Path, count: int
) -> None:
    """The first `count` rows (by id) with their spots drawn as `tcm spot` draws them (`draw_spots`)."""
    import cv2

    from pipelines.spot import draw_spots

    chosen = [r for r in spotted.results if r.error is None][:count]
    if not chosen:
        return
    found = images([r.name for r in chosen])
    out.mkdir(parents=True, exist_ok=True)
    for r in chosen:
        if r.name in found:
            canvas = draw_spots(found[r.name], r.spots)  # RGB
            cv2.imwrite(str(out / (r.name.replace("/", "__") + ".png")), canvas[:, :, ::-1])


def evaluate_pair(
    det: str,
    rec: str,
    refs: Sequence[Any],
    cfg: Any,
    *,
    tracking_uri: str | None,
    polygons: bool,
    folder: Path | None,
    num_overlays: int = 0,
    images: Callable[[Sequence[str]], Mapping[str, np.ndarray]] | None = None,
) -> tuple[dict[str, float], SpottedRows]:
    """The spotting half of `tcm evaluate --rec`: metrics (without the `test/` prefix) and the spotted rows.
    The actor pools follow `eval.num_actors` / `eval.use_gpu`; the test resize is the detector's own."""
    from pipelines.spot import Lexicons, run_report

    settings = SpotSettings(det_actors=cfg.eval.num_actors, rec_actors=cfg.eval.num_actors, use_gpu=cfg.eval.use_gpu)
    spotted = spot_rows(det, rec, refs, settings, tracking_uri=tracking_uri, seed=cfg.data.seed,
                        num_workers=cfg.data.num_workers)  # fmt: skip
    metrics = score_spotted(spotted, polygons, cfg, folder)
    if folder is not None:
        report = run_report(spotted.results, settings, Lexicons())
        (folder / "spotting").mkdir(parents=True, exist_ok=True)
        (folder / "spotting" / "report.json").write_text(json.dumps(report, indent=2))
        if num_overlays and images is not None:
            draw_overlays(spotted, images, folder / "spots", num_overlays)
    return metrics, spotted
