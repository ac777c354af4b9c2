"""`tcm export`: the network as ONNX, from an experiment config and a checkpoint. A detector: one graph up to its
output maps (`tcm/export.py`) and its sidecar JSON (the model config for the codec and normalisation, the test
resize of the checkpoint's experiment); a recogniser: a folder with its visual graph, its cross-modal graph and its
config (`tcm/recognition/export.py`; the BPE step between the two runs in Python, `OnnxRecognizer`). Both load in
`tcm spot --runtime onnxruntime` without torch (`pipelines/spot_onnx.py`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from pipelines.config import ConfigError, load_config

DETECTOR_FILE = "detector.onnx"  # the graph's name when --out is a folder
SIDECAR_SUFFIX = ".json"  # the sidecar sits beside the graph: detector.onnx -> detector.json


def detector_paths(out: str | Path) -> tuple[Path, Path]:
    """(graph, sidecar) of a detector export: `--out x.onnx` -> x.onnx, x.json; a folder -> detector.onnx,
    detector.json inside it."""
    out = Path(out)
    graph = out if out.suffix == ".onnx" else out / DETECTOR_FILE
    return graph, graph.with_suffix(SIDECAR_SUFFIX)


def detector_sidecar(model_cfg: Any, experiment: dict[str, Any] | None, outputs: list[str]) -> dict[str, Any]:
    """What the ONNX spotter needs beside the graph: the model config (head -> codec, pixel mean/std), the
    checkpoint's data section (its validation scale is `tcm spot`'s test resize, as with the PyTorch runtime),
    the output names in graph order."""
    from pipelines.config import model_config_to_dict

    return {"model": model_config_to_dict(model_cfg), "data": (experiment or {}).get("data", {}), "outputs": outputs}


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
            ckpt = load_checkpoint(weights)
            load_model_state(model, ckpt, model_cfg)
            side = size or model_cfg.input_size
            graph, sidecar = detector_paths(out)
            graph.parent.mkdir(parents=True, exist_ok=True)
            names = export_onnx(model.eval(), graph, side, side)
            sidecar.write_text(json.dumps(detector_sidecar(model_cfg, ckpt.experiment, names), indent=2, sort_keys=True))
            return names
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
    out: Path = typer.Option(..., "--out", help="Detector: a folder (detector.onnx + detector.json) or an x.onnx "
                             "file (+ x.json beside it). Recogniser: the folder to write (visual.onnx, cross.onnx, "
                             "recognizer.json). Both load in `tcm spot --runtime onnxruntime`."),  # fmt: skip
    size: int = typer.Option(None, "--size", help="Detector only: square input side of the traced example "
                             "(multiple of 32); default: model.input_size. Batch, height and width stay dynamic."),  # fmt: skip
) -> None:
    """Export the detector (up to its output maps, no decoding; a sidecar JSON beside it) or the recogniser (its
    two graphs: image encoder + visual decoder, text encoder + cross decoder; a fixed max_label_length + 1 = 26
    decoding steps) to ONNX, with a dynamic batch axis (and dynamic height and width for the detector)."""
    from pipelines.checkpoint import CheckpointError

    typer.echo(f"exporting {config} with {weights} (tracing: ~1 min for CLIP4STR-B on CPU) ...", err=True)
    try:
        names = export(config, weights, out, size)
    except (ConfigError, CheckpointError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {out} ({', '.join(names)})")
