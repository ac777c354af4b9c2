"""`tcm spot --runtime onnxruntime`: the detector and the recogniser that `tcm export` wrote, on ONNX Runtime, with
no torch in the process (nor open_clip): the same decode, test resize, codec, NMS, crops, BPE step, decoding and
lexicon as the PyTorch runtime (`pipelines/spot.py`), only the two networks run as ONNX graphs.

    --det  a folder holding detector.onnx + detector.json, or x.onnx with x.json beside it (`tcm export` of a detector)
    --rec  a folder holding visual.onnx (+ cross.onnx) + recognizer.json (`tcm export` of a recogniser)

Local paths only (ONNX Runtime reads files; on a cluster put the folders where every node sees them). What was
given instead (a PyTorch checkpoint, a models:/ URI, a file that is missing, the two swapped) is a ValueError that
names it and says what to run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.export import detector_paths
from pipelines.spot import (
    ImageSpots,
    Lexicons,
    SpotSettings,
    attach_readings,
    detector_input,
    rank_detections,
    read_in_batches,
)
from tcm.recognition.onnx_runtime import CONFIG_FILE, CROSS_FILE, VISUAL_FILE
from tcm.types import Detection

EXPORT_HINT = "tcm export --config EXPERIMENT.yaml --weights CHECKPOINT --out DIR"


def _not_a_checkpoint(flag: str, path: Path) -> None:
    """ValueError when `path` is a URI or a PyTorch checkpoint rather than an export."""
    text = str(path)
    if "://" in text or text.startswith(("models:/", "runs:/")):
        raise ValueError(f"{flag} {text}: --runtime onnxruntime reads a local `tcm export` folder, not a URI "
                         f"(export it first: {EXPORT_HINT})")  # fmt: skip
    if path.suffix in (".pt", ".pth") or (path / "model.pt").is_file():
        raise ValueError(f"{flag} {text}: a PyTorch checkpoint; --runtime onnxruntime reads what `tcm export` "
                         f"writes (export it first: {EXPORT_HINT}), or use --runtime torch")  # fmt: skip


def detector_files(det: str) -> tuple[Path, dict[str, Any]]:
    """(graph path, sidecar JSON) of --det; ValueError naming what is missing or wrong."""
    path = Path(det)
    _not_a_checkpoint("--det", path)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        raise ValueError(f"--det {det}: a recogniser export ({CONFIG_FILE}), not a detector")
    if not path.exists():
        raise ValueError(f"--det {det}: no such file or folder")
    graph, sidecar = detector_paths(path)
    for needed in (graph, sidecar):
        if not needed.is_file():
            raise ValueError(f"--det {det}: {needed} is missing (a detector's `tcm export` writes {graph.name} and "
                             f"{sidecar.name} side by side)")  # fmt: skip
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--det {det}: {sidecar} is not JSON ({err})") from None
    missing = [key for key in ("model", "outputs") if key not in meta]
    if missing:
        raise ValueError(f"--det {det}: {sidecar} lacks {', '.join(missing)} (not a `tcm export` detector sidecar)")
    return graph, meta


def recognizer_folder(rec: str) -> Path:
    """--rec as a folder holding the recogniser's export; ValueError naming the missing file."""
    path = Path(rec)
    _not_a_checkpoint("--rec", path)
    if path.suffix == ".onnx" or any(p.is_file() for p in detector_paths(path)):
        raise ValueError(f"--rec {rec}: a detector export, not a recogniser")
    if not path.is_dir():
        raise ValueError(f"--rec {rec}: no such folder (a recogniser's `tcm export` writes one)")
    if not (path / CONFIG_FILE).is_file():
        raise ValueError(f"--rec {rec}: {path / CONFIG_FILE} is missing (a recogniser's `tcm export` folder holds "
                         f"{VISUAL_FILE}, {CROSS_FILE} and {CONFIG_FILE})")  # fmt: skip
    return path


def check_pair(det: str, rec: str) -> bool:
    """Both exports readable (ValueError otherwise); whether the detector writes polygons (a poly-mode head)."""
    from pipelines.config import model_config_from_dict
    from tcm.recognition.onnx_runtime import config_from_json

    graph, meta = detector_files(det)
    det_cfg = model_config_from_dict(meta["model"], source=str(graph.with_suffix(".json")))
    folder = recognizer_folder(rec)
    rec_cfg = config_from_json((folder / CONFIG_FILE).read_text(), str(folder / CONFIG_FILE))
    for name in [VISUAL_FILE] + ([CROSS_FILE] if rec_cfg.cross_modal else []):
        if not (folder / name).is_file():
            raise ValueError(f"--rec {rec}: {folder / name} is missing (its {CONFIG_FILE} names a model with it)")
    return getattr(det_cfg.head, "mode", "quad") == "poly"


def session_threads(settings: SpotSettings) -> int:
    """ONNX Runtime intra-op threads: settings.onnx_threads, else OMP_NUM_THREADS (Ray sets it to an actor's
    CPUs; torch follows it, ONNX Runtime does not by itself), else 0 (its default: one per core)."""
    return settings.onnx_threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)


class OnnxSpotDetector:
    """`SpotDetector` on ONNX Runtime: the same `detect(bytes) -> (W, H, detections, suppressed)`."""

    def __init__(self, det: str, settings: SpotSettings):
        import onnxruntime as ort

        from pipelines.config import DataConfig, model_config_from_dict
        from tcm.config import DetectorConfig
        from tcm.heads.codecs import build_codec

        graph, meta = detector_files(det)
        cfg = model_config_from_dict(meta["model"], source=str(graph.with_suffix(".json")))
        if not isinstance(cfg, DetectorConfig):
            raise ValueError(f"--det {det}: its sidecar holds a {type(cfg).__name__}, not a detector config")
        data = DataConfig.model_validate(meta.get("data") or {})
        self.long_side = settings.long_side or data.val_long_side  # as SpotDetector: the validation scale
        self.short_side = settings.short_side or data.val_short_side
        self.max_side = data.val_canvas
        self.cfg, self.settings, self.outputs = cfg, settings, list(meta["outputs"])
        self.codec = build_codec(cfg.head)
        options = ort.SessionOptions()
        options.intra_op_num_threads = session_threads(settings)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if settings.use_gpu else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(graph), options, providers=providers)

    def detect(self, data: bytes) -> tuple[int, int, list[Detection], int]:
        from pipelines.evaluate import decode_maps

        W, H, image, scale = detector_input(data, self.long_side, self.short_side, self.max_side, self.cfg)
        maps = self.session.run(self.outputs, {"images": image[None]})  # each (1, C, h, w)
        dets = decode_maps(self.codec, {k: v[0] for k, v in zip(self.outputs, maps, strict=True)}, scale, (W, H))
        return (W, H, *rank_detections(dets, self.settings))


class OnnxSpotReader:
    """`SpotReader` on ONNX Runtime (`OnnxRecognizer`): the same `recognise(crops)` and `read(result, crops, dets)`."""

    def __init__(self, rec: str, settings: SpotSettings, lexicons: Lexicons):
        from tcm.recognition.onnx_runtime import OnnxRecognizer

        providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if settings.use_gpu else ("CPUExecutionProvider",)
        self.recognizer = OnnxRecognizer(recognizer_folder(rec), providers=providers, threads=session_threads(settings))
        self.settings, self.lexicons = settings, lexicons

    def recognise(self, crops: list[np.ndarray]) -> tuple[list[str], list[float]]:
        """(readings, confidences) of RGB uint8 crops, rec_batch_size of them per run; no lexicon."""
        from tcm.recognition.preprocess import preprocess_array

        cfg = self.recognizer.cfg
        return read_in_batches(crops, self.settings.rec_batch_size, lambda b: self.recognizer(preprocess_array(b, cfg)))

    def read(self, result: ImageSpots, crops: list[np.ndarray], dets: list[Detection]) -> ImageSpots:
        texts, confs = self.recognise(crops)
        return attach_readings(result, dets, texts, confs, self.lexicons)


def record_differences(got: list[dict[str, Any]], expected: list[dict[str, Any]], tol: float = 1e-3) -> list[str]:
    """What differs between two runs' spots.jsonl records beyond float tolerance (empty: the same spots): the
    images, the number and order of spots, the integer corners the submission writes, the texts exactly; the
    detection scores and recognition confidences within `tol`. How the runtimes are compared (test, benchmark)."""
    if [r["image"] for r in got] != [r["image"] for r in expected]:
        return ["the images differ"]
    diffs = []
    for g, e in zip(got, expected, strict=True):
        if len(g["spots"]) != len(e["spots"]):
            diffs.append(f"{g['image']}: {len(g['spots'])} spots vs {len(e['spots'])}")
            continue
        for k, (a, b) in enumerate(zip(g["spots"], e["spots"], strict=True)):
            if not np.array_equal(np.rint(a["polygon"]), np.rint(b["polygon"])):
                diffs.append(f"{g['image']} spot {k}: corners {a['polygon']} vs {b['polygon']}")
            if a["text"] != b["text"]:
                diffs.append(f"{g['image']} spot {k}: text {a['text']!r} vs {b['text']!r}")
            if abs(a["score"] - b["score"]) > tol or abs(a["confidence"] - b["confidence"]) > tol:
                diffs.append(f"{g['image']} spot {k}: score/confidence {a['score']}/{a['confidence']} vs "
                             f"{b['score']}/{b['confidence']}")  # fmt: skip
    return diffs
