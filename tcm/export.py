"""ONNX export of the detector up to its output maps (decoding stays in the numpy codecs).

The graph takes `images` (B, 3, H, W) already normalised (tcm.detector.normalize) and returns the detector's
output maps as a tuple in the order the model's dict gives them; their names are the ONNX output names, so
`dict(zip(output_names, session.run(None, feeds)))` rebuilds the dict the codec's `decode` expects. The batch,
height and width axes are dynamic (any H, W that are multiples of 32, as the test resize pads to): the traced
graph computes every feature size from the input's shape, checked at other sizes than the traced one in
tests/tcm/test_export.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

OPSET = 17  # LayerNormalization and scaled-dot-product attention export natively; onnxruntime >= 1.14 runs it


class _TupleOutputs(nn.Module):
    """Returns the wrapped detector's dict outputs as a tuple in a fixed key order."""

    def __init__(self, model: nn.Module, keys: list[str]):
        super().__init__()
        self.model = model
        self.keys = keys

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(images)
        return tuple(outputs[k] for k in self.keys)


def trace_to_onnx(
    module: nn.Module,
    example: tuple[Tensor, ...],
    path: str | Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    """`torch.onnx.export` with torch's TorchScript-based exporter (`dynamo=False`: torch 2.14's default, the
    torch.export-based one, needs onnxscript, which this project does not ship) at `OPSET`, tracing `module` (eval
    mode) on `example`; the tracer's and the legacy exporter's expected warnings are silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces its deprecation
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks become constants: intended
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )


def export_onnx(
    model: nn.Module,
    path: str | Path,
    height: int,
    width: int,
    batch_size: int = 1,  # of the tracing example only: the exported batch axis is dynamic
) -> list[str]:
    """Export `model` (eval mode), traced on a height x width example (multiples of 32); the batch, height and
    width axes stay dynamic.

    Returns the output names in graph order (exported by `trace_to_onnx`).
    """
    if height % 32 or width % 32:
        raise ValueError(f"export size {height}x{width} must be a multiple of 32 (tcm/export.py)")
    was_training = model.training
    model.eval()
    try:
        example = torch.zeros(batch_size, 3, height, width, device=next(model.parameters()).device)
        with torch.no_grad():
            keys = list(model(example).keys())
        wrapper = _TupleOutputs(model, keys).eval()
        image_axes = {0: "batch", 2: "height", 3: "width"}
        dynamic_axes = {"images": image_axes, **{k: {0: "batch", 2: f"{k}_height", 3: f"{k}_width"} for k in keys}}
        trace_to_onnx(wrapper, (example,), path, ["images"], keys, dynamic_axes)
    finally:
        model.train(was_training)
    return keys
