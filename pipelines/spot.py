"""`tcm spot`: end-to-end text spotting as Ray Data batch inference — a TCM detector finds, CLIP4STR reads.

    image files (folder or s3:// prefix; read_binary_files, streaming)
      -> map_batches(SpotDetectorActor, ActorPoolStrategy)   decode, test resize, detect, polygon NMS
      -> map_batches(crop_batch)                              rectified word crops (tcm.data.crops)
      -> map_batches(SpotReaderActor, ActorPoolStrategy)     recognise, lexicon correction
      -> driver: submission/res_<name>.txt, spots.jsonl, overlays/, report.json

`spot_images_local` is the same work in one process (same classes, same order of operations): the reference the
tests and `benchmarks/spot_throughput.py` compare the Ray pipeline against.

Exactness between the two: every image goes through the detector alone (a forward pass of one image) and the
crops of one image through the recogniser together, so no result depends on which images Ray batched together.

Bad input: an image that cannot be decoded is skipped and listed with its reason in report.json; a detection
whose polygon cannot be rectified (tcm.data.crops.DegenerateError) is dropped and counted by reason.
"""

from __future__ import annotations

import json
import os
import pickle
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import typer
from pydantic import BaseModel, ConfigDict, Field

from tcm.types import Detection

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
LEXICON_MAX_DISTANCE = 1  # spotting.md §2: published spotters keep a reading only if distance < 1.5


class SpotSettings(BaseModel):
    """How `tcm spot` runs; the defaults are the command line's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    long_side: int | None = Field(None, gt=0)  # None: the detector's validation scale (as `tcm predict`)
    short_side: int | None = Field(None, gt=0)
    min_score: float = Field(0.0, ge=0.0, le=1.0)  # 0: keep every decoded detection (the codec's box_thresh)
    nms_iou: float = Field(0.5, gt=0.0, le=1.0)  # the protocol's match IoU: two boxes above it claim one word
    det_actors: int = Field(1, ge=1)  # detector copies (one CPU each); the 2-core CI box fits one of each
    rec_actors: int = Field(1, ge=1)
    actor_cpus: float = Field(0.75, gt=0)  # per actor: one of each plus the crop tasks (0.25) fit 2 cores
    crop_cpus: float = Field(0.25, gt=0)  # crops are light next to the two networks
    batch_size: int = Field(4, ge=1)  # images per actor batch: small keeps the stream moving on few images
    rec_batch_size: int = Field(64, ge=1)  # crops per recogniser forward (within one image)
    use_gpu: bool = False
    runtime: Literal["torch", "onnxruntime"] = "torch"  # torch: checkpoints / registry URIs; onnxruntime: exports
    onnx_threads: int = Field(0, ge=0)  # 0: OMP_NUM_THREADS (Ray sets it per actor) else ORT's default, one per core
    # PyTorch recogniser: stop decoding once every word of the batch ended (the model's default, fastest); False runs
    # all max_label_length + 1 steps, as the ONNX graphs always do: the same readings in both runtimes
    rec_early_stop: bool = True


# ------------------------------------------------------------------------------------------------ NMS, lexicon


def polygon_nms(dets: Sequence[Detection], iou_thr: float = 0.5) -> tuple[list[Detection], int]:
    """Detections in descending score with every polygon overlapping a higher-scored kept one at IoU > iou_thr
    removed (ties keep the earlier one); returns (kept, number suppressed). Pairwise IoU by shapely 2's
    vectorised intersection over the (N, N) upper triangle."""
    import shapely

    from tcm.evaluation import to_geometries

    order = sorted(range(len(dets)), key=lambda i: -float(dets[i].score))  # stable: ties keep input order
    ranked = [dets[i] for i in order]
    N = len(ranked)
    if N < 2:
        return ranked, 0
    geoms = to_geometries([np.asarray(d.points, dtype=np.float64).reshape(-1, 2) for d in ranked])  # (N,)
    area = shapely.area(geoms)  # (N,)
    i, j = np.triu_indices(N, k=1)  # every pair once, i ranked above j
    inter = shapely.area(shapely.intersection(geoms[i], geoms[j]))  # (N (N - 1) / 2,)
    union = area[i] + area[j] - inter
    iou = np.zeros((N, N))
    iou[i, j] = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    keep = np.ones(N, dtype=bool)
    for a in range(N):
        if keep[a]:
            keep[a + 1 :] &= ~(iou[a, a + 1 :] > iou_thr)  # a suppresses the lower-ranked ones it overlaps
    return [d for d, k in zip(ranked, keep, strict=True) if k], int((~keep).sum())


class Lexicon:
    """A word list; `correct(reading)` is the nearest word (case-insensitive Levenshtein, original spelling kept)
    at distance <= 1, or None (the reading is dropped), as spotting.md §2 describes."""

    def __init__(self, words: Iterable[str]):
        self.words = [w for w in (x.strip() for x in words) if w]
        self._keys = [w.upper() for w in self.words]

    @classmethod
    def read(cls, path: str | Path) -> Lexicon:
        try:
            return cls(Path(path).read_text(encoding="utf-8-sig").splitlines())
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: cannot read the lexicon ({err})") from None

    def correct(self, reading: str) -> str | None:
        from rapidfuzz import process
        from rapidfuzz.distance import Levenshtein

        if not self._keys:
            return None
        hit = process.extractOne(
            reading.upper(), self._keys, scorer=Levenshtein.distance, score_cutoff=LEXICON_MAX_DISTANCE
        )
        return None if hit is None else self.words[hit[2]]  # (choice, distance, index)


class Lexicons:
    """`--lexicon FILE` (one list for all images) or `--lexicon-dir DIR` (`voc_<image stem>.txt` per image,
    the IC15 strong-lexicon naming `voc_img_12.txt`); an image without its file gets an empty lexicon (all its
    readings dropped) and is counted."""

    def __init__(self, file: str | None = None, folder: str | None = None):
        self.file, self.folder = file, folder
        self._shared = Lexicon.read(file) if file else None

    @property
    def active(self) -> bool:
        return self.file is not None or self.folder is not None

    def for_image(self, name: str) -> tuple[Lexicon | None, bool]:
        """(lexicon or None when none is configured, whether the image's own file was missing)."""
        if self._shared is not None:
            return self._shared, False
        if self.folder is None:
            return None, False
        path = Path(self.folder) / f"voc_{Path(name).stem}.txt"
        if not path.is_file():
            return Lexicon([]), True
        return Lexicon.read(path), False


# ------------------------------------------------------------------------------------------------ per image


@dataclass
class Spot:
    points: np.ndarray  # (P, 2) float64, original pixels
    score: float
    text: str
    confidence: float


@dataclass
class ImageSpots:
    """One image's result; `error` set (and nothing else) when the image could not be decoded."""

    name: str
    width: int = 0
    height: int = 0
    spots: list[Spot] = field(default_factory=list)
    degenerate: dict[str, int] = field(default_factory=dict)  # reason (before its parenthesis) -> count
    suppressed: int = 0  # removed by polygon NMS
    lexicon_dropped: int = 0
    lexicon_missing: bool = False
    error: str | None = None

    def record(self) -> dict[str, Any]:
        """The spots.jsonl line (rounded as written: what two runs must agree on)."""
        return {
            "image": self.name,
            "width": self.width,
            "height": self.height,
            "spots": [
                {"polygon": s.points.round(2).tolist(), "score": round(s.score, 5), "text": s.text,
                 "confidence": round(s.confidence, 4)}  # fmt: skip
                for s in self.spots
            ],
        }


def _dets_json(dets: Sequence[Detection]) -> str:
    return json.dumps([{"p": d.points.reshape(-1).tolist(), "s": float(d.score)} for d in dets])  # exact floats


def _dets_parse(text: str) -> list[Detection]:
    return [Detection(np.asarray(d["p"], dtype=np.float64).reshape(-1, 2), d["s"]) for d in json.loads(text)]


def detector_input(
    data: bytes, long_side: int, short_side: int, max_side: int | None, cfg: Any
) -> tuple[int, int, np.ndarray, tuple[float, float]]:
    """Encoded image -> (W, H, the normalised test-size input (3, H', W') float32, scale back to the original).
    ValueError: undecodable. Both runtimes' detectors start here."""
    from tcm.data.transforms import decode_image, normalize, resize_for_test

    image = decode_image(data)  # (H, W, 3) uint8 BGR
    H, W = image.shape[:2]
    resized, scale = resize_for_test(image, long_side, short_side, max_side=max_side)  # /32 padded
    return W, H, normalize(resized, cfg.pixel_mean, cfg.pixel_std), scale


def rank_detections(dets: Sequence[Detection], settings: SpotSettings) -> tuple[list[Detection], int]:
    """--min-score, then polygon NMS in descending score: (kept, suppressed). Both runtimes' detectors end here."""
    return polygon_nms([d for d in dets if d.score >= settings.min_score], settings.nms_iou)


class SpotDetector:
    """Decode, test-resize (the detector's validation scale, /32 padding), detect one image, NMS (PyTorch)."""

    def __init__(self, model_uri: str, tracking_uri: str | None, settings: SpotSettings):
        import torch

        from pipelines import registry
        from pipelines.config import DataConfig
        from tcm.build import build_codec
        from tcm.recognition.config import RecognizerConfig

        loaded = registry.load_model(model_uri, tracking_uri)
        if isinstance(loaded.detector, RecognizerConfig):
            raise ValueError(f"--det {model_uri}: a recogniser, not a detector")
        data = DataConfig.model_validate((loaded.experiment or {}).get("data", {}))
        self.long_side = settings.long_side or data.val_long_side
        self.short_side = settings.short_side or data.val_short_side
        self.max_side = data.val_canvas
        self.settings = settings
        self.device = torch.device("cuda" if settings.use_gpu and torch.cuda.is_available() else "cpu")
        self.model = loaded.model.to(self.device).eval()
        self.cfg = loaded.detector
        self.codec = build_codec(loaded.detector.head)

    def detect(self, data: bytes) -> tuple[int, int, list[Detection], int]:
        """(width, height, detections in descending score after NMS, suppressed). ValueError: undecodable."""
        from pipelines.evaluate import predict_eval_batch

        W, H, image, scale = detector_input(data, self.long_side, self.short_side, self.max_side, self.cfg)
        batch = {"image": [image], "scale": np.asarray([scale], dtype=np.float64), "width": [W], "height": [H]}
        dets = predict_eval_batch(self.model, self.codec, batch, [0], self.device)[0]
        return (W, H, *rank_detections(dets, self.settings))


def crop_detections(image_bgr: np.ndarray, dets: Sequence[Detection]) -> tuple[list[np.ndarray], list[Detection], Counter]:
    """RGB uint8 crops of the detections that rectify, those detections, and the dropped ones by reason.

    4-point detections: the perspective warp of tcm.data.crops. Detector contours with more points (poly-mode
    heads) are unordered rings, not the top/bottom chains `crop_word` expects: their min-area rectangle."""
    from tcm.data.crops import DegenerateError, check_polygon, clockwise, crop_min_area, crop_word

    rgb = image_bgr[:, :, ::-1]  # BGR -> RGB view; the crops are copies
    crops, kept, dropped = [], [], Counter()
    for det in dets:
        try:
            pts = clockwise(check_polygon(det.points))
            crop = crop_word(rgb, pts) if len(pts) == 4 else crop_min_area(rgb, pts)
        except DegenerateError as err:
            dropped[str(err).split(" (")[0]] += 1
            continue
        crops.append(np.ascontiguousarray(crop))
        kept.append(det)
    return crops, kept, dropped


def read_in_batches(
    crops: Sequence[np.ndarray], step: int, recognise: Callable[[list[np.ndarray]], tuple[list[str], list[float]]]
) -> tuple[list[str], list[float]]:
    """`recognise` over `step` crops at a time: (texts, confidences) of all of them, in order."""
    texts: list[str] = []
    confs: list[float] = []
    for start in range(0, len(crops), step):
        t, c = recognise(list(crops[start : start + step]))
        texts += list(t)
        confs += [float(v) for v in c]
    return texts, confs


def attach_readings(
    result: ImageSpots, dets: Sequence[Detection], texts: Sequence[str], confs: Sequence[float], lexicons: Lexicons
) -> ImageSpots:
    """The image's spots: each detection with its reading, corrected by the image's lexicon or dropped (counted)."""
    lexicon, result.lexicon_missing = lexicons.for_image(result.name)
    for det, text, conf in zip(dets, texts, confs, strict=True):
        if lexicon is not None:
            corrected = lexicon.correct(text)
            if corrected is None:
                result.lexicon_dropped += 1
                continue
            text = corrected
        result.spots.append(Spot(np.asarray(det.points, dtype=np.float64), float(det.score), text, conf))
    return result


class SpotReader:
    """Recognise one image's crops (one forward per rec_batch_size of them) and apply the lexicon (PyTorch)."""

    def __init__(self, model_uri: str, tracking_uri: str | None, settings: SpotSettings, lexicons: Lexicons):
        import torch

        from pipelines import registry
        from tcm.recognition.config import RecognizerConfig

        loaded = registry.load_model(model_uri, tracking_uri)
        if not isinstance(loaded.detector, RecognizerConfig):
            raise ValueError(f"--rec {model_uri}: a detector, not a recogniser")
        self.device = torch.device("cuda" if settings.use_gpu and torch.cuda.is_available() else "cpu")
        self.model = loaded.model.to(self.device).eval()
        self.settings = settings
        self.lexicons = lexicons

    def recognise(self, crops: Sequence[np.ndarray]) -> tuple[list[str], list[float]]:
        """(readings, confidences) of RGB uint8 crops, rec_batch_size of them per forward; no lexicon."""
        import torch

        from tcm.recognition.preprocess import preprocess

        def forward(batch: list[np.ndarray]) -> tuple[list[str], list[float]]:
            with torch.inference_mode():
                x = preprocess(batch, self.model.cfg).to(self.device)  # (B, 3, H, W)
                return self.model.tokenizer.decode(self.model(x, early_stop=self.settings.rec_early_stop)["logits"])

        return read_in_batches(crops, self.settings.rec_batch_size, forward)

    def read(self, result: ImageSpots, crops: Sequence[np.ndarray], dets: Sequence[Detection]) -> ImageSpots:
        texts, confs = self.recognise(crops)
        return attach_readings(result, dets, texts, confs, self.lexicons)


def make_detector(det: str, tracking_uri: str | None, settings: SpotSettings) -> Any:
    """The detector of `settings.runtime`: `SpotDetector` (PyTorch) or `OnnxSpotDetector` (an export, no torch)."""
    match settings.runtime:
        case "torch":
            return SpotDetector(det, tracking_uri, settings)
        case "onnxruntime":
            from pipelines.spot_onnx import OnnxSpotDetector

            return OnnxSpotDetector(det, settings)


def make_reader(rec: str, tracking_uri: str | None, settings: SpotSettings, lexicons: Lexicons) -> Any:
    """The recogniser of `settings.runtime`: `SpotReader` (PyTorch) or `OnnxSpotReader` (an export, no torch)."""
    match settings.runtime:
        case "torch":
            return SpotReader(rec, tracking_uri, settings, lexicons)
        case "onnxruntime":
            from pipelines.spot_onnx import OnnxSpotReader

            return OnnxSpotReader(rec, settings, lexicons)


def _undecodable(name: str, err: Exception) -> ImageSpots:
    return ImageSpots(name, error=str(err))


def spot_images_local(
    det: str,
    rec: str,
    paths: Sequence[str | Path],
    settings: SpotSettings | None = None,
    *,
    tracking_uri: str | None = None,
    lexicons: Lexicons | None = None,
) -> list[ImageSpots]:
    """The single-process reference: the same detector, crops, NMS, recogniser and lexicon, one image at a time,
    results sorted by image name (as `spot_images` returns them)."""
    from tcm.data.transforms import decode_image

    settings = settings or SpotSettings()
    detector = make_detector(det, tracking_uri, settings)
    reader = make_reader(rec, tracking_uri, settings, lexicons or Lexicons())
    out = []
    for path in paths:
        name = Path(path).name
        data = Path(path).read_bytes()
        try:
            W, H, dets, suppressed = detector.detect(data)
        except ValueError as err:
            out.append(_undecodable(name, err))
            continue
        crops, kept, dropped = crop_detections(decode_image(data), dets)
        result = ImageSpots(name, W, H, degenerate=dict(dropped), suppressed=suppressed)
        out.append(reader.read(result, crops, kept))
    return sorted(out, key=lambda r: r.name)


# ------------------------------------------------------------------------------------------------ Ray stages


class SpotDetectorActor:
    """Ray Data actor: one detector copy; rows {bytes, path} -> {name, bytes, width, height, dets, suppressed, error}."""

    def __init__(self, model_uri: str, tracking_uri: str | None, settings: dict, root: str | None):
        self.detector = make_detector(model_uri, tracking_uri, SpotSettings(**settings))
        self.root = root  # None: `path` is the name already (a row id, when evaluating ingested rows)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cols: dict[str, list] = {k: [] for k in ("name", "bytes", "width", "height", "dets", "suppressed", "error")}
        for data, path in zip(batch["bytes"], batch["path"], strict=True):
            name = str(path) if self.root is None else relative_name(str(path), self.root)
            try:
                W, H, dets, suppressed = self.detector.detect(bytes(data))
                error = ""
            except ValueError as err:
                W = H = suppressed = 0
                dets, error = [], str(err)
            for key, value in zip(cols, (name, bytes(data), W, H, _dets_json(dets), suppressed, error), strict=True):
                cols[key].append(value)
        out = {k: np.asarray(v, dtype=object if k in ("name", "bytes", "dets", "error") else np.int64) for k, v in cols.items()}
        return _with_gt(out, batch)


def _with_gt(out: dict[str, np.ndarray], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`out` plus the batch's ground-truth column when it has one (evaluation rows carry it to the driver)."""
    return {**out, "gt": np.asarray(batch["gt"], dtype=object)} if "gt" in batch else out


def gt_json(polygons: Sequence[Any], texts: Sequence[str], ignore: Sequence[bool]) -> str:
    """A unified row's ground truth as the `gt` column: {"polygons": [flat x0, y0, ...], "texts", "ignore"}."""
    flat = [np.asarray(p, dtype=np.float64).reshape(-1).tolist() for p in polygons]
    return json.dumps({"polygons": flat, "texts": [str(t) for t in texts], "ignore": [bool(i) for i in ignore]})


def gt_words(gt: Mapping[str, Any]) -> list[int]:
    """Indices of the ground-truth instances a recogniser is scored on: transcribed and not don't care."""
    from tcm.evaluation_e2e import DONT_CARE

    return [i for i, (t, ig) in enumerate(zip(gt["texts"], gt["ignore"], strict=True)) if t and t != DONT_CARE and not ig]


def crop_ground_truth(image_bgr: np.ndarray, gt: Mapping[str, Any]) -> tuple[list[np.ndarray], list[int], Counter]:
    """RGB crops of the scored GT words (`gt_words`) by tcm.data.crops.crop_word, their instance indices, and
    the degenerate ones by reason."""
    from tcm.data.crops import DegenerateError, crop_word

    rgb = image_bgr[:, :, ::-1]  # BGR -> RGB view; the crops are copies
    crops, kept, dropped = [], [], Counter()
    for i in gt_words(gt):
        try:
            crops.append(np.ascontiguousarray(crop_word(rgb, np.asarray(gt["polygons"][i], dtype=np.float64))))
        except DegenerateError as err:
            dropped[str(err).split(" (")[0]] += 1
            continue
        kept.append(i)
    return crops, kept, dropped


def crop_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stateless Ray Data stage: re-decode each image, rectify its detections; crops travel pickled (a list of
    differently sized arrays per row)."""
    from tcm.data.transforms import decode_image

    crops_col, dets_col, dropped_col, gt_crops_col = [], [], [], []
    gts = batch["gt"] if "gt" in batch else [None] * len(batch["bytes"])
    for data, dets_text, error, gt in zip(batch["bytes"], batch["dets"], batch["error"], gts, strict=True):
        gt_crops: tuple[list, list, dict] = ([], [], {})
        if error:
            crops, kept, dropped = [], [], Counter()
        else:
            image = decode_image(bytes(data))
            crops, kept, dropped = crop_detections(image, _dets_parse(dets_text))
            if gt is not None:
                g_crops, g_kept, g_dropped = crop_ground_truth(image, json.loads(gt))
                gt_crops = (g_crops, g_kept, dict(g_dropped))
        crops_col.append(pickle.dumps(crops, protocol=pickle.HIGHEST_PROTOCOL))
        dets_col.append(_dets_json(kept))
        dropped_col.append(json.dumps(dict(dropped)))
        gt_crops_col.append(pickle.dumps(gt_crops, protocol=pickle.HIGHEST_PROTOCOL))
    out = {k: batch[k] for k in ("name", "width", "height", "suppressed", "error")}
    out = {**out, "crops": np.asarray(crops_col, dtype=object), "dets": np.asarray(dets_col, dtype=object),
           "degenerate": np.asarray(dropped_col, dtype=object)}  # fmt: skip
    if "gt" in batch:
        out["gt_crops"] = np.asarray(gt_crops_col, dtype=object)  # pickled (crops, instance indices, degenerate)
    return _with_gt(out, batch)


class SpotReaderActor:
    """Ray Data actor: one recogniser copy; crop rows -> {name, result (the pickled ImageSpots)}."""

    def __init__(self, model_uri: str, tracking_uri: str | None, settings: dict, lexicon: str | None, lexicon_dir: str | None):
        self.reader = make_reader(model_uri, tracking_uri, SpotSettings(**settings), Lexicons(lexicon, lexicon_dir))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results, readings = [], []
        for i, name in enumerate(batch["name"]):
            if "gt_crops" in batch:
                readings.append(json.dumps(self._read_ground_truth(pickle.loads(batch["gt_crops"][i]))))
            if batch["error"][i]:
                results.append(pickle.dumps(_undecodable(str(name), ValueError(batch["error"][i]))))
                continue
            result = ImageSpots(str(name), int(batch["width"][i]), int(batch["height"][i]),
                                degenerate=json.loads(batch["degenerate"][i]), suppressed=int(batch["suppressed"][i]))  # fmt: skip
            self.reader.read(result, pickle.loads(batch["crops"][i]), _dets_parse(batch["dets"][i]))
            results.append(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        out = {"name": batch["name"], "result": np.asarray(results, dtype=object)}
        if "gt_crops" in batch:
            out["gt_readings"] = np.asarray(readings, dtype=object)
        return _with_gt(out, batch)

    def _read_ground_truth(self, gt_crops: tuple[list, list, dict]) -> dict[str, Any]:
        """{"index": GT instance of each crop, "text", "confidence", "degenerate": GT words not cropped}."""
        crops, index, degenerate = gt_crops
        texts, confs = self.reader.recognise(crops)
        return {"index": index, "text": texts, "confidence": confs, "degenerate": degenerate}


def relative_name(path: str, root: str) -> str:
    """The file's path below the --images root ('/'-separated), its name in every output."""
    root = root.rstrip("/")
    return path[len(root) + 1 :] if path.startswith(root + "/") else Path(path).name


def list_images(images: str) -> tuple[Any, list[str]]:
    """(storage Location of the root, image paths inside its filesystem), by suffix, sorted. StorageError when
    the folder is missing; ValueError when it holds no image."""
    from pipelines import storage

    loc = storage.resolve(images)
    files = [f for f in storage.list_files(loc) if f.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
        raise ValueError(f"--images {images}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return loc, [loc.join(f).path for f in files]


def spot_images(
    det: str,
    rec: str,
    images: str,
    settings: SpotSettings | None = None,
    *,
    tracking_uri: str | None = None,
    lexicon: str | None = None,
    lexicon_dir: str | None = None,
    progress: Callable[[int, int], None] = lambda _done, _total: None,
) -> list[ImageSpots]:
    """The Ray Data pipeline over a folder or s3:// prefix; results sorted by image name (streamed in, and
    `progress(done, total)` called as each image's result arrives)."""
    import ray.data

    from pipelines.train import init_ray

    settings = settings or SpotSettings()
    Lexicons(lexicon, lexicon_dir)  # a bad --lexicon fails here, before any actor starts
    loc, paths = list_images(images)
    init_ray()
    ds = ray.data.read_binary_files(
        paths, filesystem=loc.fs, include_paths=True, num_cpus=settings.crop_cpus
    )
    ds = spot_dataset(ds, det, rec, settings, tracking_uri=tracking_uri, lexicon=lexicon, lexicon_dir=lexicon_dir,
                      root=loc.path)  # fmt: skip
    out = []
    for row in ds.iter_rows():
        out.append(pickle.loads(row["result"]))
        progress(len(out), len(paths))
    return sorted(out, key=lambda r: r.name)


def spot_dataset(
    ds: Any,
    det: str,
    rec: str,
    settings: SpotSettings,
    *,
    tracking_uri: str | None,
    lexicon: str | None = None,
    lexicon_dir: str | None = None,
    root: str | None = None,
) -> Any:
    """The spotting stages over a Ray Dataset of {bytes, path} rows (+ optional `gt`, a `gt_json` string):
    -> {name, result (pickled ImageSpots)}; with `gt`, also `gt` and `gt_readings` (JSON: the recogniser's
    readings of the ground-truth word crops). `root`: names are paths below it; None: `path` is the name."""
    import ray.data

    gpu = 1 if settings.use_gpu else 0
    ds = ds.map_batches(
        SpotDetectorActor,
        fn_constructor_kwargs={"model_uri": det, "tracking_uri": tracking_uri, "settings": settings.model_dump(), "root": root},
        batch_size=settings.batch_size, batch_format="numpy", num_gpus=gpu, num_cpus=settings.actor_cpus,
        compute=ray.data.ActorPoolStrategy(size=settings.det_actors),
    )  # fmt: skip
    ds = ds.map_batches(crop_batch, batch_size=settings.batch_size, batch_format="numpy", num_cpus=settings.crop_cpus)
    ds = ds.map_batches(
        SpotReaderActor,
        fn_constructor_kwargs={"model_uri": rec, "tracking_uri": tracking_uri, "settings": settings.model_dump(),
                               "lexicon": lexicon, "lexicon_dir": lexicon_dir},  # fmt: skip
        batch_size=settings.batch_size, batch_format="numpy", num_gpus=gpu, num_cpus=settings.actor_cpus,
        compute=ray.data.ActorPoolStrategy(size=settings.rec_actors),
    )  # fmt: skip
    return ds


# ------------------------------------------------------------------------------------------------ outputs


def submission_lines(spots: Sequence[Spot], polygons: bool) -> str:
    """IC15 task 4.4 lines `x1,y1,...,x4,y4,transcription` (integer corners, clockwise on screen), or with
    `polygons` AdelaiDet's Total-Text form `x1,y1,...,xn,yn,####transcription` (the ring reversed: its
    evaluator refuses shapely-`is_ccw` rings, i.e. clockwise on screen)."""
    from tcm.data.crops import clockwise

    lines = []
    for s in spots:
        ring = clockwise(np.asarray(s.points, dtype=np.float64))
        if polygons:
            coords = np.rint(ring[::-1]).astype(np.int64).reshape(-1).tolist()  # counter-clockwise on screen
            lines.append(",".join(map(str, coords)) + ",####" + s.text)
        else:
            if len(ring) != 4:
                ring = _min_area_quad(ring)
            coords = np.rint(ring).astype(np.int64).reshape(-1).tolist()  # (8,)
            lines.append(",".join(map(str, coords)) + "," + s.text)
    return "".join(f"{line}\n" for line in lines)


def _min_area_quad(points: np.ndarray) -> np.ndarray:
    import cv2

    from tcm.data.crops import clockwise

    return clockwise(cv2.boxPoints(cv2.minAreaRect(points.astype(np.float32))).astype(np.float64))  # (4, 2)


def font_path() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")


def draw_spots(image_bgr: np.ndarray, spots: Sequence[Spot]) -> np.ndarray:
    """RGB copy of the image with each polygon outlined and its transcription above its first corner, in
    DejaVu Sans sized to the image (1/40 of its longer side, at least 10 px)."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1]))
    draw = ImageDraw.Draw(canvas)
    H, W = image_bgr.shape[:2]
    font = ImageFont.truetype(font_path(), max(10, round(max(H, W) / 40)))
    width = max(1, round(max(H, W) / 500))
    for s in spots:
        ring = [(float(x), float(y)) for x, y in s.points]
        draw.polygon(ring, outline=(255, 200, 0), width=width)
        x, y = min(p[0] for p in ring), min(p[1] for p in ring)
        box = draw.textbbox((x, y), s.text or "?", font=font, anchor="lb")
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((x, y), s.text or "?", font=font, fill=(255, 255, 0), anchor="lb")
    return np.asarray(canvas)


def run_report(results: Sequence[ImageSpots], settings: SpotSettings, lexicons: Lexicons) -> dict[str, Any]:
    degenerate: Counter = Counter()
    for r in results:
        degenerate.update(r.degenerate)
    ok = [r for r in results if r.error is None]
    return {
        "images": len(results),
        "spotted": len(ok),
        "skipped": [{"image": r.name, "reason": r.error} for r in results if r.error is not None],
        "words": sum(len(r.spots) for r in ok),
        "degenerate_dropped": sum(degenerate.values()),
        "degenerate_reasons": dict(sorted(degenerate.items())),
        "nms_suppressed": sum(r.suppressed for r in ok),
        "lexicon_dropped": sum(r.lexicon_dropped for r in ok),
        "lexicon_missing": [r.name for r in ok if r.lexicon_missing],
        "settings": settings.model_dump(),
        "lexicon": lexicons.file,
        "lexicon_dir": lexicons.folder,
    }


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # whole or nothing


def write_spots(
    results: Sequence[ImageSpots],
    out: Path,
    *,
    polygons: bool,
    report: Mapping[str, Any],
    read_image: Callable[[str], bytes] | None = None,
) -> dict[str, str]:
    """submission/res_<stem>.txt per decoded image, spots.jsonl (one line per image, by name), report.json, and
    overlays/<stem>.png when `read_image(name)` gives the image bytes. Each file is written whole (tmp + rename),
    so a re-run after a crash replaces rather than adds to it."""
    import cv2

    from pipelines.score import submission_name
    from tcm.data.transforms import decode_image

    (out / "submission").mkdir(parents=True, exist_ok=True)
    ok = [r for r in results if r.error is None]
    for r in ok:
        _atomic_write(out / "submission" / submission_name(Path(r.name).name), submission_lines(r.spots, polygons))
        if read_image is not None:
            (out / "overlays").mkdir(exist_ok=True)
            canvas = draw_spots(decode_image(read_image(r.name)), r.spots)  # RGB
            cv2.imwrite(str(out / "overlays" / (Path(r.name).stem + ".png")), canvas[:, :, ::-1])
    _atomic_write(out / "spots.jsonl", "".join(json.dumps(r.record()) + "\n" for r in ok))
    _atomic_write(out / "report.json", json.dumps(report, indent=2))
    return {"submission": str(out / "submission"), "spots": str(out / "spots.jsonl"), "report": str(out / "report.json")}


def check_pair(
    det: str, rec: str, tracking_uri: str | None, runtime: str = "torch", det_flag: str = "--det"
) -> bool:
    """Load both models once on the driver: ValueError when `det` (given as `det_flag`) is not a detector or
    --rec not a recogniser (with onnxruntime: not a readable export, `pipelines.spot_onnx.check_pair`). Returns
    whether the detector writes polygons (a poly-mode head) rather than quads."""
    from pipelines import registry
    from tcm.recognition.config import RecognizerConfig

    if runtime == "onnxruntime":
        from pipelines import spot_onnx

        return spot_onnx.check_pair(det, rec)

    det_cfg = registry.load_model(det, tracking_uri).detector
    if isinstance(det_cfg, RecognizerConfig):
        raise ValueError(f"{det_flag} {det}: a recogniser, not a detector (give the detector there and the recogniser as --rec)")
    if not isinstance(registry.load_model(rec, tracking_uri).detector, RecognizerConfig):
        raise ValueError(f"--rec {rec}: a detector, not a recogniser")
    return getattr(det_cfg.head, "mode", "quad") == "poly"


def spot_command(
    det: str = typer.Option(..., "--det", help="Detector: models:/name@alias, runs:/<id>/model or a checkpoint folder (path, file://, s3://); with --runtime onnxruntime its `tcm export` folder (detector.onnx + detector.json) or x.onnx (+ x.json)."),
    rec: str = typer.Option(..., "--rec", help="Recogniser: models:/tcm-recognizer@champion, runs:/…/model or a checkpoint folder; with --runtime onnxruntime its `tcm export` folder (visual.onnx, cross.onnx, recognizer.json)."),
    runtime: str = typer.Option("torch", "--runtime", help="torch (checkpoints, registry URIs) | onnxruntime (`tcm export` folders, local; torch is never imported)."),
    images: str = typer.Option(..., "--images", help="Folder or s3:// prefix of images (searched recursively; jpg, png, …)."),
    out: Path = typer.Option(Path("spots"), "--out", help="Folder for submission/, spots.jsonl, overlays/ and report.json."),
    lexicon: Path = typer.Option(None, "--lexicon", exists=True, dir_okay=False, help="One word per line: each reading becomes the nearest word at edit distance <= 1 (case-insensitive) or is dropped."),
    lexicon_dir: Path = typer.Option(None, "--lexicon-dir", exists=True, file_okay=False, help="Per-image lexicons voc_<image stem>.txt (IC15 strong: voc_img_12.txt); same rule."),
    long_side: int = typer.Option(None, "--long-side", min=32, help="Detector test resize: longer side cap (default: its validation scale)."),
    short_side: int = typer.Option(None, "--short-side", min=32, help="Detector test resize: shorter side target (default: its validation scale)."),
    min_score: float = typer.Option(0.0, "--min-score", min=0.0, max=1.0, help="Drop detections scoring below this."),
    det_actors: int = typer.Option(1, "--det-actors", min=1, help="Detector actor pool size (model copies)."),
    rec_actors: int = typer.Option(1, "--rec-actors", min=1, help="Recogniser actor pool size (model copies)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per actor batch."),
    gpu: bool = typer.Option(False, "--gpu", help="One GPU per actor."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow tracking URI for models:/ and runs:/ URIs."),
    no_overlays: bool = typer.Option(False, "--no-overlays", help="Skip the overlay PNGs."),
    fixed_steps: bool = typer.Option(False, "--fixed-steps", help="PyTorch recogniser: run all decoding steps rather than stop once every word ended, as the ONNX graphs do (the same readings in both runtimes; docs/onnx_spot.md)."),
) -> None:
    """Spot text end to end: detect, crop, read (Ray Data); IC15 4.4 submission files, spots.jsonl, overlays."""
    from pipelines import registry, storage
    from pipelines.config import MlflowConfig

    if runtime not in ("torch", "onnxruntime"):
        typer.echo(f"error: --runtime {runtime}: expected torch or onnxruntime", err=True)
        raise typer.Exit(2)
    errors: tuple[type[Exception], ...] = (storage.StorageError, ValueError)
    if runtime == "torch":  # pipelines.checkpoint imports torch: the onnxruntime driver never does
        from pipelines.checkpoint import CheckpointError

        errors += (CheckpointError,)
    if lexicon and lexicon_dir:
        typer.echo("error: give --lexicon or --lexicon-dir, not both", err=True)
        raise typer.Exit(2)
    uri = registry.absolute_tracking_uri(tracking_uri or MlflowConfig().resolved_tracking_uri())
    settings = SpotSettings(long_side=long_side, short_side=short_side, min_score=min_score, det_actors=det_actors,
                            rec_actors=rec_actors, batch_size=batch_size, use_gpu=gpu, runtime=runtime,
                            rec_early_stop=not fixed_steps)  # fmt: skip
    lex = (str(lexicon) if lexicon else None, str(lexicon_dir) if lexicon_dir else None)
    try:
        summary = run_spot(det, rec, images, out, settings, tracking_uri=uri, lexicon=lex[0], lexicon_dir=lex[1],
                           overlays=not no_overlays, echo=lambda line: typer.echo(line, err=True))  # fmt: skip
    except errors as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "polygons"}, indent=2))


def run_spot(
    det: str,
    rec: str,
    images: str,
    out: Path,
    settings: SpotSettings,
    *,
    tracking_uri: str | None,
    lexicon: str | None = None,
    lexicon_dir: str | None = None,
    overlays: bool = True,
    echo: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """`tcm spot` (and the workflow's spot stage): check the pair, run the pipeline, write the outputs. Returns
    the output paths with the counts of report.json and whether the submission holds polygons."""
    from pipelines import storage

    polygons = check_pair(det, rec, tracking_uri, settings.runtime)  # fail fast, before Ray starts
    results = spot_images(
        det, rec, images, settings, tracking_uri=tracking_uri, lexicon=lexicon, lexicon_dir=lexicon_dir,
        progress=lambda done, total: echo(f"spotted {done}/{total}") if done % 50 == 0 or done == total else None,
    )  # fmt: skip
    loc = storage.resolve(images)
    report = run_report(results, settings, Lexicons(lexicon, lexicon_dir))
    paths = write_spots(
        results, out, polygons=polygons, report=report,
        read_image=(lambda name: storage.read_bytes(loc.join(name))) if overlays else None,
    )  # fmt: skip
    for item in report["skipped"]:
        echo(f"warning: skipped {item['image']}: {item['reason']}")
    return {**paths, "images": report["images"], "words": report["words"], "skipped": len(report["skipped"]),
            "degenerate_dropped": report["degenerate_dropped"], "polygons": polygons}  # fmt: skip
