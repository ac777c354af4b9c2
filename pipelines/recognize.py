"""`tcm recognize`: read the words of a folder of crops with a registered (or checkpointed) recogniser and write
the ICDAR 2015 task 4.3 form with confidences (`word_1.png, "text", 0.9731`; tcm.data.formats.words43), the
input of `tcm score --protocol recognition`.

    tcm recognize --model models:/tcm-recognizer@champion --images crops/ --out pred.txt
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import typer

if TYPE_CHECKING:  # torch loads when the command runs, not for `tcm recognize --help`
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def recognize_files(
    model: torch.nn.Module, paths: Sequence[Path], *, batch_size: int = 64, progress: Callable[[int], None] = lambda _n: None
) -> list[tuple[str, str, float]]:
    """(file name, text, confidence) per image, in the given order. An unreadable image is an error naming it."""
    import torch
    from PIL import Image

    from tcm.recognition.preprocess import preprocess

    out: list[tuple[str, str, float]] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        crops = []
        for path in chunk:
            try:
                with Image.open(path) as img:
                    crops.append(np.asarray(img.convert("RGB")))  # (H, W, 3) uint8 RGB
            except (OSError, ValueError) as err:
                raise ValueError(f"{path}: not a readable image ({err})") from None
        with torch.inference_mode():
            logits = model(preprocess(crops, model.cfg))["logits"]  # (B, T, C)
        texts, confidences = model.tokenizer.decode(logits)
        out += [(p.name, t, c) for p, t, c in zip(chunk, texts, confidences, strict=True)]
        progress(len(out))
    return out


def recognize_command(
    model: str = typer.Option(..., "--model", help="models:/tcm-recognizer@champion, runs:/…/model or a checkpoint folder."),
    images: Path = typer.Option(..., "--images", help="Folder of word crops (png, jpg, …); read in name order."),
    out: Path = typer.Option(None, "--out", help="Prediction file (4.3 form with confidences); default: stdout."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Crops per forward pass."),
) -> None:
    """Recognise word crops with a CLIP4STR model; writes `name, "text", confidence` lines (ICDAR 2015 4.3)."""
    from pipelines import registry
    from pipelines.checkpoint import CheckpointError
    from tcm.data.formats.words43 import WordLabel, write
    from tcm.recognition.config import RecognizerConfig

    def fail(message: str) -> None:
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1)

    if not images.is_dir():
        fail(f"--images {images}: not a folder")
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        fail(f"--images {images}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    try:
        loaded = registry.load_model(model, tracking_uri)
    except (CheckpointError, ValueError) as err:
        fail(str(err))
    if not isinstance(loaded.detector, RecognizerConfig):
        fail(f"--model {model}: a detector, not a recogniser (use `tcm predict` for detectors)")
    try:
        preds = recognize_files(
            loaded.model, paths, batch_size=batch_size,
            progress=lambda n: typer.echo(f"recognised {n}/{len(paths)}", err=True),
        )
    except ValueError as err:
        fail(str(err))
    data = write(WordLabel(name, text, conf) for name, text, conf in preds)
    if out is None:
        typer.echo(data.decode("utf-8"), nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(out)  # whole or nothing: a crash leaves no half-written prediction file
        typer.echo(f"wrote {len(preds)} predictions to {out}", err=True)
