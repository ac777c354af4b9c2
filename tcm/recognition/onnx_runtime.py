"""`OnnxRecognizer`: the exported CLIP4STR (tcm/recognition/export.py) on ONNX Runtime.

    rec = OnnxRecognizer("rec_onnx/")                     # visual.onnx (+ cross.onnx), recognizer.json
    texts, confidences = rec(preprocess(crops, rec.cfg))  # as model.tokenizer.decode(model(images)["logits"])

Between the two sessions the visual stages' greedy ids become caption tokens in Python, as the PyTorch model's
`prediction_tokens` makes them (cut at [E], lowercase alphanumerics, CLIP's BPE), with the torch-free BPE of
`tcm.recognition.bpe`. Nothing here imports torch or open_clip (`tests/pipelines/test_spot_onnx.py` checks it):
onnxruntime when a recogniser is loaded, numpy for the BPE ids, the decoding and `preprocess_array`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from tcm.recognition.bpe import clip_bpe
from tcm.recognition.charset import CharsetAdapter
from tcm.recognition.config import RecognizerConfig
from tcm.recognition.tokenizer import Tokenizer

VISUAL_FILE = "visual.onnx"
CROSS_FILE = "cross.onnx"
CONFIG_FILE = "recognizer.json"


def config_to_json(cfg: RecognizerConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2)


def config_from_json(text: str, source: str) -> RecognizerConfig:
    """The inverse of `config_to_json` (JSON lists back to the config's tuples); errors name `source`."""
    try:
        values = json.loads(text)
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return RecognizerConfig(**values)
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{source}: not a recogniser config ({err})") from None


class OnnxRecognizer:
    """images (B, 3, H, W) float32 normalised (numpy or a CPU tensor) -> (texts, confidences) via `__call__`, or
    the logits dict (`visual_logits`, `cross_logits` with the cross branch, `logits`) via `logits`."""

    def __init__(
        self,
        directory: str | Path,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        threads: int = 0,  # onnxruntime intra-op threads; 0 = its default (one per physical core)
    ):
        import onnxruntime as ort

        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: missing (a recogniser's `tcm export` folder holds {VISUAL_FILE}, "
                                    f"{CROSS_FILE} and {CONFIG_FILE})")  # fmt: skip
        self.cfg: RecognizerConfig = config_from_json(config_path.read_text(), str(config_path))
        self.tokenizer = Tokenizer(self.cfg.charset)
        self.cross_adapter = CharsetAdapter(self.cfg.cross_charset)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        paths = [directory / VISUAL_FILE] + ([directory / CROSS_FILE] if self.cfg.cross_modal else [])
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing (the {CONFIG_FILE} beside it names a model that has it)")
        self.sessions: list[Any] = [ort.InferenceSession(str(p), options, providers=list(providers)) for p in paths]

    def logits(self, images: Any) -> dict[str, np.ndarray]:
        images = np.ascontiguousarray(images, dtype=np.float32)  # (B, 3, H, W)
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, *self.cfg.image_size):
            raise ValueError(f"images of shape {images.shape}; the model reads (B, 3, {self.cfg.image_size[0]}, "
                             f"{self.cfg.image_size[1]}) (tcm.recognition.preprocess)")  # fmt: skip
        memory, visual_logits, visual_ids = self.sessions[0].run(None, {"images": images})
        out = {"visual_logits": visual_logits}  # (B, T, C)
        if self.cfg.cross_modal:
            B, S, T = visual_ids.shape
            Lc = self.cfg.text_context_length
            bpe = clip_bpe()
            tokens = np.stack(  # S x (B, Lc) -> (B, S, Lc): the string step, one stage at a time
                [bpe(self.tokenizer.ids_to_texts(visual_ids[:, s], self.cross_adapter), Lc) for s in range(S)], axis=1
            )
            (out["cross_logits"],) = self.sessions[1].run(None, {"memory": memory, "text_tokens": tokens})
        out["logits"] = out.get("cross_logits", visual_logits)
        return out

    def __call__(self, images: Any) -> tuple[list[str], list[float]]:
        return self.tokenizer.decode(self.logits(images)["logits"])
