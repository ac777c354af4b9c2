"""`tcm export`: the network as ONNX, from an experiment config and a checkpoint. A detector: one graph up to its
output maps (`tcm/export.py`); a recogniser: a folder with its visual graph, its cross-modal graph and its config
(`tcm/recognition/export.py`; the BPE step between the two runs in Python, `OnnxRecognizer`)."""

from __future__ import annotations

from pathlib import Path

import typer

from pipelines.config import ConfigError, load_config


def export(config: str | Path, weights: str, out: str | Path, size: int | None = None) -> list[str]:
    """Build the model of `config`, load `weights` (a checkpoint folder, path or s3://), write ONNX. Returns what
    was written: the detector's output names, or the recogniser's file names."""
    from pipelines.checkpoint import load_checkpoint, load_model_state
    from tcm.config import DetectorConfig
    from tcm.recognition.config import RecognizerConfig

    model_cfg = load_config(config).tcm_config()
    match model_cfg:  # weights come from the checkpoint, not CLIP
        case DetectorConfig():
            from tcm.build import build_detector
            from tcm.export import export_onnx

            model = build_detector(model_cfg, pretrained=False)
            load_model_state(model, load_checkpoint(weights), model_cfg)
            side = size or model_cfg.input_size
            return export_onnx(model.eval(), out, side, side)
        case RecognizerConfig():
            if size is not None:
                raise ValueError(f"--size is the detector's: a recogniser reads {model_cfg.image_size} crops "
                                 "(model.recognizer.image_size)")  # fmt: skip
            from tcm.recognition.build import build_recognizer
            from tcm.recognition.export import export_recognizer

            model = build_recognizer(model_cfg, pretrained=False)
            load_model_state(model, load_checkpoint(weights), model_cfg)
            return [p.name for p in export_recognizer(model.eval(), out)]
        case _:
            raise ConfigError(f"{config}: no ONNX export for a {type(model_cfg).__name__}")


def export_command(
    config: Path = typer.Option(..., "--config", help="Experiment YAML the checkpoint was trained with (a "
                                "detector or a recogniser)."),  # fmt: skip
    weights: str = typer.Option(..., "--weights", help="Checkpoint folder (local path, file:// or s3://)."),
    out: Path = typer.Option(..., "--out", help="Detector: the ONNX file to write. Recogniser: the folder to write "
                             "(visual.onnx, cross.onnx, recognizer.json; load with OnnxRecognizer)."),  # fmt: skip
    size: int = typer.Option(None, "--size", help="Detector only: square input side of the traced example "
                             "(multiple of 32); default: model.input_size. The batch axis is dynamic."),  # fmt: skip
) -> None:
    """Export the detector (up to its output maps, no decoding) or the recogniser (its two graphs: image encoder +
    visual decoder, text encoder + cross decoder; a fixed max_label_length + 1 = 26 decoding steps) to ONNX, with a dynamic batch
    axis."""
    from pipelines.checkpoint import CheckpointError

    typer.echo(f"exporting {config} with {weights} (tracing: ~1 min for CLIP4STR-B on CPU) ...", err=True)
    try:
        names = export(config, weights, out, size)
    except (ConfigError, CheckpointError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {out} ({', '.join(names)})")
