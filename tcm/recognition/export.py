"""ONNX export of the CLIP4STR recogniser: two graphs around the one string step ONNX cannot hold.

CLIP4STR's cross branch reads the *text* of the visual prediction: class ids -> a string cut at its first [E] ->
lowercase alphanumerics -> CLIP's BPE (Python, `tcm.recognition.encoder.prediction_tokens`). The visual branch
never reads the cross branch (`CLIP4STR.predict_visual` runs whole first), so the split is exact:

- `visual.onnx`: `images` (B, 3, H, W) normalised -> `memory` (B, N, E), `visual_logits` (B, T, C) (after the
  refinements), `visual_ids` (B, S, T) int64: the greedy ids of each of the S = refine_iters + 1 visual stages
  (the AR prediction, then each refinement);
- between the sessions, in Python: `prediction_tokens(visual_ids[:, s], ...)` for each stage -> `text_tokens`
  (B, S, Lc) int64, the same function `CLIP4STR.caption_tokens` calls;
- `cross.onnx` (only with the cross branch): `memory`, `text_tokens` -> `cross_logits` (B, T, C) = the final
  `logits` (the AR cross prediction over stage 0's text, then one cloze refinement per later stage).

The AR loops run all T = max_label_length + 1 steps: the graphs equal `model(images, early_stop=False)` (no
data-dependent exit). The default early-stopping forward gives the same visual logits, but its cross branch runs
only as many AR steps as the visual one took, so its final logits can differ (docs/recognition.md). The batch axis
is dynamic. `recognizer.json` beside the graphs holds the `RecognizerConfig` (charsets, input size,
normalisation), so `tcm.recognition.onnx_runtime.OnnxRecognizer` needs nothing else.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from tcm.export import trace_to_onnx
from tcm.recognition.model import CLIP4STR
from tcm.recognition.onnx_runtime import (
    CONFIG_FILE,
    CROSS_FILE,
    VISUAL_FILE,
    config_from_json,
    config_to_json,
)

__all__ = ["CONFIG_FILE", "CROSS_FILE", "VISUAL_FILE", "config_from_json", "config_to_json", "export_recognizer"]
VISUAL_OUTPUTS = ["memory", "visual_logits", "visual_ids"]
CROSS_INPUTS = ["memory", "text_tokens"]
CROSS_OUTPUTS = ["cross_logits"]


class _VisualGraph(nn.Module):
    """images -> (memory, the last visual stage's logits, the greedy ids of every stage (B, S, T))."""

    def __init__(self, model: CLIP4STR):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.model.cfg
        memory = self.model.image_encoder(images)  # (B, N, E)
        stages = self.model.predict_visual(memory, cfg.num_positions, False, cfg.refine_iters)  # S x (B, T, C)
        ids = torch.stack([stage.argmax(-1) for stage in stages], dim=1)  # (B, S, T)
        return memory, stages[-1], ids


class _CrossGraph(nn.Module):
    """(memory, text_tokens (B, S, Lc)) -> cross logits (B, T, C)."""

    def __init__(self, model: CLIP4STR):
        super().__init__()
        self.model = model

    def forward(self, memory: Tensor, tokens: Tensor) -> Tensor:
        T = self.model.cfg.num_positions
        return self.model.predict_cross(memory, tokens, T, steps=T)


def export_recognizer(model: CLIP4STR, directory: str | Path, batch_size: int = 2) -> list[Path]:
    """Write `visual.onnx` (+ `cross.onnx` with the cross branch) and `recognizer.json` into `directory`
    (created); returns the written paths. `batch_size` is the tracing example's only: the batch axis is dynamic
    (2, not 1, so that no batch-1 broadcast can be baked in)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    was_training = model.training
    model.eval()  # dropout off; the frozen text blocks are in eval mode anyway
    device = next(model.parameters()).device
    written = []
    try:
        H, W = cfg.image_size
        images = torch.zeros(batch_size, 3, H, W, device=device)  # (B, 3, H, W)
        batch = {0: "batch"}
        path = directory / VISUAL_FILE
        trace_to_onnx(_VisualGraph(model), (images,), path, ["images"], VISUAL_OUTPUTS,
                      {name: batch for name in ["images", *VISUAL_OUTPUTS]})  # fmt: skip
        written.append(path)
        if model.cross_modal:
            assert model.text_encoder is not None
            with torch.no_grad():
                memory = model.image_encoder(images)  # (B, N, E)
            S = cfg.refine_iters + 1  # visual stages: the prediction + each refinement
            tokens = model.text_encoder.tokenize(["export"] * batch_size, device)  # (B, Lc)
            tokens = tokens.unsqueeze(1).expand(-1, S, -1).contiguous()  # (B, S, Lc)
            path = directory / CROSS_FILE
            trace_to_onnx(_CrossGraph(model), (memory, tokens), path, CROSS_INPUTS, CROSS_OUTPUTS,
                          {name: batch for name in [*CROSS_INPUTS, *CROSS_OUTPUTS]})  # fmt: skip
            written.append(path)
    finally:
        model.train(was_training)
    path = directory / CONFIG_FILE
    path.write_text(config_to_json(cfg))
    written.append(path)
    return written
