"""`tcm check-targets`: encode every image's targets, decode them as a perfect prediction, score with ICDAR.

A head whose own targets do not decode back to the ground truth cannot be trained to find it; this catches
target bugs (shrink/unclip mismatch, lost instances, wrong rescaling) before a GPU-week is spent on them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Literal

import numpy as np
import typer

from pipelines import storage
from pipelines.ingest import plan_pairs, read_rows
from pipelines.sources import open_source
from tcm.config import DBHeadConfig, FCEHeadConfig, HeadConfig, PANHeadConfig
from tcm.evaluation import evaluate
from tcm.geometry import rect_short_side
from tcm.types import Instance

STRIDE = 32  # every head's maps divide the input by at most 32: pad to a multiple of it
MIN_TRAINABLE = 8  # px, min-area-rect short side below which heads treat text as ignored (DB / mmocr rule)


def head_config(kind: str, mode: str | None) -> HeadConfig:
    match kind:
        case "db":
            cfg: HeadConfig = DBHeadConfig()
        case "pan":
            cfg = PANHeadConfig()
        case "fce":
            cfg = FCEHeadConfig()
        case other:
            raise ValueError(f"--head {other!r}: expected db, pan or fce")
    return replace(cfg, mode=mode) if mode else cfg


def _instances(row: dict) -> list[Instance]:
    return [
        Instance(np.asarray(p, dtype=np.float64).reshape(-1, 2), text, ignore)  # flat x0,y0,... -> (P, 2)
        for p, text, ignore in zip(row["polygons"], row["texts"], row["ignore"], strict=True)
    ]


def check_targets(kind: str, fmt: str, src: str, mode: str | None = None) -> dict:
    """Round-trip every image of a dataset through the head's codec. Returns ICDAR IoU scores."""
    from tcm.build import build_codec

    cfg = head_config(kind, mode)
    codec = build_codec(cfg)
    source = open_source([src])
    plan = plan_pairs(source.list(), fmt)
    pairs, pairs_all, skipped, tiny = [], [], source.refused + plan.quarantined, 0
    for row, bad, _ in read_rows(source, plan.pairs, fmt, fmt, "check"):
        if bad is not None:
            skipped.append(bad)
            continue
        gt = _instances(row)
        # what the codec is meant to reproduce: text below the trainable size is don't-care by design
        trainable = [replace(g, ignore=g.ignore or rect_short_side(g.points) < MIN_TRAINABLE) for g in gt]
        tiny += sum(t.ignore and not g.ignore for g, t in zip(gt, trainable, strict=True))
        height = -(-row["height"] // STRIDE) * STRIDE  # ceil to the stride: maps must tile the canvas
        width = -(-row["width"] // STRIDE) * STRIDE
        targets = codec.encode([g.points for g in gt], [g.ignore for g in gt], height, width)
        dets = codec.decode(codec.targets_as_outputs(targets), scale=(1.0, 1.0))
        pairs.append((trainable, dets))
        pairs_all.append((gt, dets))
    result = evaluate(pairs)
    every = evaluate(pairs_all)
    return {
        "head": kind,
        "mode": cfg.mode,
        "format": fmt,
        "images": len(pairs),
        "precision": result.precision,
        "recall": result.recall,
        "hmean": result.hmean,
        "hmean_all": every.hmean,  # tiny text (< MIN_TRAINABLE px) counted as care: what a detector is scored on
        "tiny_care": tiny,
        "skipped": skipped,
    }


def check_targets_command(
    head: str = typer.Option(..., "--head", help="Head whose codec to check: db, pan or fce."),
    format: str = typer.Option(..., "--format", help="Dataset format of --src (icdar2015, totaltext, ...)."),
    src: str = typer.Option(..., "--src", help="Dataset folder or s3:// prefix in its native layout."),
    mode: Literal["quad", "poly"] = typer.Option(
        None, "--mode", help="Decode mode (quad or poly); default: the head's default (poly for curved text)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Encode targets, decode them as a perfect prediction and print the ICDAR hmean (target bugs show here)."""
    try:
        result = check_targets(head, format, src, mode)
    except (ValueError, storage.StorageError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    if json_out:
        typer.echo(json.dumps(result))
        return
    for item in result["skipped"]:
        typer.echo(f"skipped {item['source']}: {item['reason']}", err=True)
    typer.echo(
        f"{head} ({result['mode']}) on {result['images']} {format} images: precision {result['precision']:.4f} "
        f"recall {result['recall']:.4f} hmean {result['hmean']:.4f}"
    )
    typer.echo(
        f"  ({result['tiny_care']} care instances under {MIN_TRAINABLE} px scored as don't-care, as the head is not "
        f"trained on them; counting them as care: hmean {result['hmean_all']:.4f})"
    )
