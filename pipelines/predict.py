"""`tcm predict`: run a model on image files; polygons as JSON, RRC submission files and overlay PNGs.

No Ray: a handful of images on one machine. The test-time resize is the one evaluation uses (keep ratio to
(long, short) side, pad to /32), at the scale the model was validated with unless told otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

from pipelines import registry
from pipelines.config import DataConfig
from tcm.recognition.config import RecognizerConfig
from tcm.types import Detection

# from random weights the tiny preset needs ~700 steps to pass hmean 0.8 on synthetic text (pipelines/demo.py);
# a model trained from random weights for fewer than this has not learned to find text
FEW_STEPS = 500


def model_warnings(loaded: registry.LoadedModel, tracking_uri: str | None) -> list[str]:
    """Why this model's output should not be trusted: its validation hmean is below the promotion floor, or it
    was trained from random weights (no CLIP weights, no warm start) for only a few steps."""
    from pipelines.config import MlflowConfig
    from pipelines.tasks import task_for

    meta, exp = loaded.meta or {}, loaded.experiment or {}
    floor = MlflowConfig().promote_min_hmean
    primary = task_for(loaded.detector).primary_metric  # hmean; a recogniser's word accuracy
    hmean = (meta.get("val") or {}).get(primary)  # a checkpoint folder carries its latest validation
    if meta.get("mlflow_run_id") and tracking_uri:
        try:
            hmean = registry.logged_val_hmean(tracking_uri, meta["mlflow_run_id"], f"val/{primary}")
        except Exception:  # the run lives in another store: keep what the checkpoint says
            pass
    out = []
    if hmean is not None and hmean < floor:
        out.append(f"its logged validation {primary} {hmean:.4f} is below mlflow.promote_min_hmean {floor:g}")
    random_init = not (exp.get("model") or {}).get("clip", {}).get("weights") and not (exp.get("train") or {}).get("init_from")
    steps = meta.get("global_step")
    if exp and random_init and steps is not None and int(steps) < FEW_STEPS:
        out.append(f"it was trained from random weights for only {int(steps)} steps (< {FEW_STEPS})")
    return out


@dataclass
class ImagePrediction:
    path: str
    width: int
    height: int
    detections: list[Detection]


def predict_images(
    loaded: registry.LoadedModel,
    images: Sequence[Path],
    *,
    long_side: int,
    short_side: int,
    max_side: int | None = None,
    min_score: float = 0.0,
) -> list[ImagePrediction]:
    """Detect text in each image file, one at a time (padded to /32 only, as `tcm evaluate` does, so both give
    the same polygons for the same image); polygons in the image's own pixels. `max_side` caps the longer
    resized side (`data.val_canvas`)."""
    import torch

    from pipelines.evaluate import decode_batch
    from tcm.build import build_codec
    from tcm.data.transforms import decode_image, normalize, resize_for_test

    codec = build_codec(loaded.detector.head)
    det = loaded.detector
    out = []
    for path in images:
        image = decode_image(Path(path).read_bytes())  # (H, W, 3) uint8 BGR
        H, W = image.shape[:2]
        resized, scale = resize_for_test(image, long_side, short_side, max_side=max_side)
        x = torch.from_numpy(normalize(resized, det.pixel_mean, det.pixel_std))[None]  # (1, 3, H', W')
        dets = decode_batch(loaded.model, codec, x, [scale], [(W, H)])[0]
        out.append(ImagePrediction(str(path), W, H, [d for d in dets if d.score >= min_score]))
    return out


def draw_detections(image_bgr: np.ndarray, dets: Sequence[Detection]) -> np.ndarray:
    """A copy of the image with each detection outlined and its score written at its first corner.

    No ground truth here, so no matched / missed colours (those are `tcm.visualize.draw_overlay`'s)."""
    import cv2

    canvas = image_bgr.copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 500))
    for det in dets:
        pts = np.round(det.points).astype(np.int32).reshape(-1, 1, 2)  # (P, 1, 2) as OpenCV wants
        cv2.polylines(canvas, [pts], isClosed=True, color=(0, 200, 255), thickness=thickness)
        x, y = pts[0, 0]
        cv2.putText(canvas, f"{det.score:.2f}", (int(x), max(10, int(y) - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35 * thickness, (0, 200, 255), 1, cv2.LINE_AA)
    return canvas


def write_outputs(preds: Sequence[ImagePrediction], out: Path, overlays: bool = True) -> dict[str, str]:
    """predictions.json, submission/res_<name>.txt (RRC form) and overlays/<name>.png under `out`."""
    import cv2

    from pipelines.score import submission_name, write_submission
    from tcm.data.transforms import decode_image

    out.mkdir(parents=True, exist_ok=True)
    (out / "submission").mkdir(exist_ok=True)
    records = []
    for p in preds:
        name = Path(p.path).name
        write_submission(out / "submission" / submission_name(name), p.detections)
        records.append(
            {
                "image": p.path,
                "width": p.width,
                "height": p.height,
                "detections": [
                    {"points": d.points.round(2).tolist(), "score": round(float(d.score), 5)} for d in p.detections
                ],
            }
        )
        if overlays:
            (out / "overlays").mkdir(exist_ok=True)
            canvas = draw_detections(decode_image(Path(p.path).read_bytes()), p.detections)
            cv2.imwrite(str(out / "overlays" / (Path(name).stem + ".png")), canvas)
    (out / "predictions.json").write_text(json.dumps(records, indent=2))
    return {"predictions": str(out / "predictions.json"), "submission": str(out / "submission")}


def write_readings(loaded: registry.LoadedModel, images: Sequence[Path], out: Path) -> dict[str, str]:
    """A recogniser's predictions: each image read as one word crop, written as `predictions.txt` in the ICDAR
    2015 task 4.3 form with confidences (what `tcm recognize` writes; `tcm score --protocol recognition` reads it)
    and `predictions.json`."""
    from pipelines.recognize import recognize_files
    from tcm.data.formats.words43 import WordLabel, write

    readings = recognize_files(loaded.model, list(images))
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.txt").write_bytes(write(WordLabel(name, text, conf) for name, text, conf in readings))
    records = [{"image": str(p), "text": t, "confidence": round(float(c), 5)} for p, (_, t, c) in zip(images, readings, strict=True)]
    (out / "predictions.json").write_text(json.dumps(records, indent=2))
    for r in records:
        typer.echo(f"{r['image']}: {r['text']!r} ({r['confidence']:.3f})")
    return {"predictions": str(out / "predictions.json"), "words": str(out / "predictions.txt")}


def predict_command(
    images: list[Path] = typer.Argument(..., help="Image files to detect text in.", exists=True, dir_okay=False),
    model: str = typer.Option(
        ..., "--model", help="models:/name@alias, runs:/<id>/model, or a checkpoint folder (path, file:// or s3://)."
    ),
    out: Path = typer.Option(Path("predictions"), "--out", help="Folder for predictions.json, submission/ and overlays/."),
    long_side: int = typer.Option(None, "--long-side", min=32, help="Test resize: longer side cap (default: the model's validation scale)."),
    short_side: int = typer.Option(None, "--short-side", min=32, help="Test resize: shorter side target (default: the model's validation scale)."),
    min_score: float = typer.Option(0.0, "--min-score", min=0.0, max=1.0, help="Drop detections scoring below this."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow tracking URI for models:/ and runs:/ URIs."),
    no_overlays: bool = typer.Option(False, "--no-overlays", help="Skip the overlay PNGs."),
) -> None:
    """Detect text in images: polygons as JSON, RRC submission files and overlay PNGs (a recogniser model: each
    image read as a word crop, predictions in the ICDAR 2015 4.3 form)."""
    from pipelines.checkpoint import CheckpointError
    from pipelines.config import MlflowConfig
    from pipelines.storage import StorageError

    uri = registry.absolute_tracking_uri(tracking_uri or MlflowConfig().resolved_tracking_uri())
    try:
        loaded = registry.load_model(model, uri)
    except (CheckpointError, StorageError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    for why in model_warnings(loaded, uri):
        typer.echo(f"warning: {model}: {why}: expect few or meaningless predictions", err=True)
    match loaded.detector:
        case RecognizerConfig():  # a CLIP4STR model: every image is one word crop
            paths = write_readings(loaded, images, out)
            typer.echo(json.dumps(paths, indent=2))
            return
        case _:
            pass
    data = DataConfig.model_validate((loaded.experiment or {}).get("data", {}))
    preds = predict_images(
        loaded,
        images,
        long_side=long_side or data.val_long_side,
        short_side=short_side or data.val_short_side,
        max_side=data.val_canvas,
        min_score=min_score,
    )
    paths = write_outputs(preds, out, overlays=not no_overlays)
    for p in preds:
        typer.echo(f"{p.path}: {len(p.detections)} text instance(s)")
    typer.echo(json.dumps(paths, indent=2))

