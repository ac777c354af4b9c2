"""`tcm export`: the network up to its output maps as ONNX, from an experiment config and a checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from pipelines.config import ConfigError, load_config


def export(config: str | Path, weights: str, out: str | Path, size: int | None = None) -> list[str]:
    """Build the detector of `config`, load `weights` (a checkpoint folder, path or s3://), write ONNX."""
    from pipelines.checkpoint import load_checkpoint, load_model_state
    from tcm.build import build_detector
    from tcm.export import export_onnx

    cfg = load_config(config)
    detector_cfg = cfg.detector()
    model = build_detector(detector_cfg, pretrained=False)  # weights come from the checkpoint, not CLIP
    load_model_state(model, load_checkpoint(weights), detector_cfg)
    side = size or detector_cfg.input_size
    return export_onnx(model.eval(), out, side, side)


def export_command(
    config: Path = typer.Option(..., "--config", help="Experiment YAML the checkpoint was trained with."),
    weights: str = typer.Option(..., "--weights", help="Checkpoint folder (local path, file:// or s3://)."),
    out: Path = typer.Option(..., "--out", help="ONNX file to write."),
    size: int = typer.Option(None, "--size", help="Square input side of the traced example (multiple of 32); "
                             "default: model.input_size. The batch axis is dynamic."),  # fmt: skip
) -> None:
    """Export the detector (up to its output maps, no decoding) to ONNX."""
    from pipelines.checkpoint import CheckpointError

    try:
        names = export(config, weights, out, size)
    except (ConfigError, CheckpointError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {out} (outputs: {', '.join(names)})")
