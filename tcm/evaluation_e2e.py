"""End-to-end text spotting evaluation: the ICDAR 2015 end-to-end and word-spotting protocols, exactly as the
official RRC `E2E_iou` v1.1 script computes them, and the Total-Text end-to-end protocol (AdelaiDet's
evaluator, used by ABCNet, TESTR, DeepSolo). Facts: ../shared/reference/spotting.md §3, §4.

Per image (`SpottingProtocol`):
1. ground truth `###` is don't care. Word spotting also makes don't care every GT word that fails the
   dictionary rule (`include_in_dictionary`: digits, fewer than 3 letters, inner punctuation other than `-`,
   characters outside the Latin/Greek ranges) and compares against the cleaned word
   (`dictionary_transcription`: a final `'s` dropped, `-` stripped at both ends, outer punctuation removed);
2. a detection is don't care (out of the precision denominator) when area(D ∩ G) / area(D) > 0.5 for some
   don't-care GT G;
3. the whole IoU matrix, then greedy one-to-one matching in GT file order, detections in file order (sorted by
   descending confidence with `confidences=True`, as the official CONFIDENCES option): a pair with IoU > 0.5
   (strict) is consumed **whatever its text**, and is a hit only when the transcriptions match;
4. text match, both sides upper-cased (`str.upper`): word spotting exact (against the cleaned GT); end to end
   exact, or the GT with one special character (`!?.:,*"()·[]/'`) dropped at its start, its end, or both.
Dataset: R = Σhits / Σcare GT, P = Σhits / Σcare detections, H = 2PR / (P + R) (micro over images);
per image, as the script: recall 1 and precision 1 (0 with care detections) when the image has no care GT.
With confidences, AP = Σ over hits at rank n (hits so far / n) / Σcare GT, all care detections ranked by
confidence (the script's `compute_ap`).

Total-Text (`TOTALTEXT`): the same matching with polygons and the word-spotting rule, as AdelaiDet runs it on
Total-Text; its "detection only" figure is `detection_only` (text ignored, only `###` don't care).

Geometry is tcm.evaluation's (vectorised, same decisions as a per-pair shapely loop); where a polygon is
invalid (a bow-tie), tcm.evaluation's documented repair rule applies (the RRC's Polygon3 would take the
polygon as it is, AdelaiDet's evaluator refuses it). Ties in confidence keep file order (a stable sort; the
script's numpy quicksort leaves tie order unspecified).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tcm.evaluation import (
    IoUProtocol,
    PackedImage,
    PackedPolygons,
    clockwise_packed,
    edge_sums,
    evaluate,
)

DONT_CARE = "###"  # RRC / AdelaiDet don't-care transcription
SPECIAL_CHARACTERS = "!?.:,*\"()·[]/'"  # RRC default SPECIAL_CHARACTERS (E2E: droppable at the GT's ends)
_DICTIONARY_PUNCTUATION = "'!?.:,*\"()·[]/"  # include_in_dictionary's replaced characters (the same set)
_NOT_ALLOWED = "×÷·"  # include_in_dictionary rejects these outright
# include_in_dictionary's allowed code points: a-z, A-Z, U+00C0-U+01BF, U+01C4-U+027F, U+0386-U+03FF, '-'
_ALLOWED_RANGES = ((0x61, 0x7A), (0x41, 0x5A), (0xC0, 0x1BF), (0x1C4, 0x27F), (0x386, 0x3FF), (0x2D, 0x2D))


@dataclass(frozen=True)
class SpottingProtocol:
    """One of the RRC E2E script's two modes (its defaults, spotting.md §3.1)."""

    kind: Literal["e2e", "word-spotting"] = "e2e"
    iou_thr: float = 0.5  # IOU_CONSTRAINT (a match needs IoU > 0.5, strict)
    dc_thr: float = 0.5  # AREA_PRECISION_CONSTRAINT (don't-care det: inter / area(D) > 0.5)
    min_length_care_word: int = 3  # MIN_LENGTH_CARE_WORD (word spotting only)
    special_characters: str = SPECIAL_CHARACTERS  # SPECIAL_CHARACTERS (end to end only)
    only_remove_first_last: bool = True  # ONLY_REMOVE_FIRST_LAST_CHARACTER (end to end only)

    @property
    def word_spotting(self) -> bool:
        return self.kind == "word-spotting"


E2E = SpottingProtocol("e2e")
WORD_SPOTTING = SpottingProtocol("word-spotting")
TOTALTEXT = SpottingProtocol("word-spotting")  # AdelaiDet evaluates Total-Text with WORD_SPOTTING=True


def resolve_spotting(protocol: str | SpottingProtocol) -> SpottingProtocol:
    match protocol:
        case SpottingProtocol():
            return protocol
        case "e2e":
            return E2E
        case "word-spotting":
            return WORD_SPOTTING
        case "totaltext-e2e":
            return TOTALTEXT
        case _:
            raise ValueError(
                f"unknown spotting protocol {protocol!r}: use 'e2e', 'word-spotting' or 'totaltext-e2e'"
            )


@dataclass
class SpottedWord:
    """One predicted word: polygon, transcription, confidence (1.0 when the file has none)."""

    points: np.ndarray  # (P, 2) float64
    text: str
    score: float = 1.0


# --------------------------------------------------------------------------------------------- text rules


def _clean(text: str) -> str:
    """The RRC dictionary cleaning: final 's / 'S dropped, '-' stripped, punctuation -> space, then strip."""
    if text[-2:] in ("'s", "'S"):
        text = text[:-2]
    text = text.strip("-")
    for ch in _DICTIONARY_PUNCTUATION:
        text = text.replace(ch, " ")
    return text.strip()


def include_in_dictionary(text: str, min_length: int = 3) -> bool:
    """RRC `include_in_dictionary`: does a GT word count in word spotting (else it becomes don't care)?"""
    word = _clean(text)
    if " " in word or len(word) < min_length:
        return False
    return all(
        ch not in _NOT_ALLOWED and any(lo <= ord(ch) <= hi for lo, hi in _ALLOWED_RANGES) for ch in word
    )


def dictionary_transcription(text: str) -> str:
    """RRC `include_in_dictionary_transcription`: the cleaned GT word word spotting compares against."""
    return _clean(text)


def transcription_match(gt: str, det: str, protocol: SpottingProtocol = E2E) -> bool:
    """Is `det` a correct reading of `gt` (both upper-cased here, as the script does before calling it)?"""
    gt, det = gt.upper(), det.upper()
    if protocol.word_spotting:
        return gt == det
    special = protocol.special_characters
    if not protocol.only_remove_first_last:  # strip special characters from both ends of both strings
        return gt.strip(special) == det.strip(special)
    if gt == det:
        return True
    if not gt:  # the script indexes gt[0] here (an exception, counted as no match by AdelaiDet)
        return False
    first, last = gt[0] in special, gt[-1] in special
    return (first and gt[1:] == det) or (last and gt[:-1] == det) or (first and last and gt[1:-1] == det)


def care_ground_truth(texts: Sequence[str], ignore: Sequence[bool], protocol: SpottingProtocol):
    """(don't care (G,) bool, the transcriptions to compare against) under the protocol's GT rule."""
    dont_care = np.zeros(len(texts), dtype=bool)
    compare = list(texts)
    for i, (text, ign) in enumerate(zip(texts, ignore, strict=True)):
        if ign or text == DONT_CARE:
            dont_care[i] = True
        elif protocol.word_spotting:
            if include_in_dictionary(text, protocol.min_length_care_word):
                compare[i] = dictionary_transcription(text)
            else:
                dont_care[i] = True
    return dont_care, compare


# --------------------------------------------------------------------------------------------- inputs


@dataclass
class SpottingImage:
    """One image, packed: GT polygons, texts and don't-care flags; detections in matching order."""

    gt: PackedPolygons
    gt_texts: list[str]
    gt_ignore: np.ndarray  # (G,) bool: don't care before the protocol's rule (`###`, a reader's flag)
    det: PackedPolygons
    det_texts: list[str]
    scores: np.ndarray  # (D,) float64
    det_lines: np.ndarray | None = None  # (D,) the file line of each detection, for reports


def spotting_image(gt_points, gt_texts, gt_ignore, words: Sequence[SpottedWord]) -> SpottingImage:
    """From point arrays and SpottedWord objects (the in-memory form; readers build SpottingImage directly)."""
    return SpottingImage(
        gt=PackedPolygons.of(list(gt_points)),
        gt_texts=list(gt_texts),
        gt_ignore=np.asarray(gt_ignore, dtype=bool).reshape(-1),  # (G,)
        det=PackedPolygons.of([w.points for w in words]),
        det_texts=[w.text for w in words],
        scores=np.array([float(w.score) for w in words], dtype=np.float64).reshape(-1),  # (D,)
    )


def _by_confidence(im: SpottingImage) -> tuple[SpottingImage, np.ndarray]:
    """The image with detections sorted by descending confidence (stable) and the order applied (D,)."""
    order = np.argsort(-im.scores, kind="stable")  # (D,)
    sizes = im.det.sizes
    start = np.cumsum(sizes) - sizes  # (D,)
    corner = (
        np.concatenate([np.arange(start[i], start[i] + sizes[i]) for i in order]) if len(order) else order
    )
    det = PackedPolygons(im.det.flat[corner.astype(np.int64)], sizes[order])
    lines = im.det_lines[order] if im.det_lines is not None else None
    texts = [im.det_texts[i] for i in order]
    return SpottingImage(im.gt, im.gt_texts, im.gt_ignore, det, texts, im.scores[order], lines), order


# --------------------------------------------------------------------------------------------- results


def _hmean(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


@dataclass
class SpottingImageResult:
    gt_care: int
    det_care: int
    hits: int  # matched pairs whose transcriptions match
    gt_dontcare: np.ndarray  # (G,) bool, after the protocol's rule
    det_dontcare: np.ndarray  # (D,) bool, in matching order
    pairs: list[tuple[int, int, bool]] = field(default_factory=list)  # (gt, det in matching order, correct)
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (D,) file index
    det_texts: list[str] = field(default_factory=list)  # detection texts in matching order
    gt_compared: list[str] = field(default_factory=list)  # the GT texts compared against (cleaned in WS)

    @property
    def recall(self) -> float:
        return 1.0 if self.gt_care == 0 else self.hits / self.gt_care

    @property
    def precision(self) -> float:
        if self.gt_care == 0:
            return 0.0 if self.det_care > 0 else 1.0
        return 0.0 if self.det_care == 0 else self.hits / self.det_care

    @property
    def hmean(self) -> float:
        return _hmean(self.precision, self.recall)


@dataclass
class SpottingResult:
    precision: float
    recall: float
    hmean: float
    per_image: list[SpottingImageResult]
    counts: dict[str, int]  # images, gt_care, det_care, hits
    protocol: SpottingProtocol
    ap: float | None = None  # with confidences only
    detection_only: dict[str, float] = field(default_factory=dict)  # P / R / H, text ignored, only ### DC


def _average_precision(scores: list[float], hits: list[bool], gt_care: int) -> float:
    """The script's compute_ap: care detections ranked by confidence, precision at each hit, over care GT."""
    if not scores:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    correct, total = 0, 0.0
    for rank, i in enumerate(order.tolist(), start=1):
        if hits[i]:
            correct += 1
            total += correct / rank
    return total / gt_care if gt_care > 0 else total


def evaluate_spotting(
    images: Iterable[SpottingImage],
    protocol: str | SpottingProtocol = "e2e",
    confidences: bool = False,
) -> SpottingResult:
    """Dataset scores of spotted words against transcribed ground truth, one SpottingImage per image."""
    proto = resolve_spotting(protocol)
    geo_proto = IoUProtocol(iou_thr=proto.iou_thr, dc_thr=proto.dc_thr)
    ims, orders, cares, compares = [], [], [], []
    for im in images:
        order = np.arange(len(im.det))
        if confidences:
            im, order = _by_confidence(im)
        dont_care, compare = care_ground_truth(im.gt_texts, im.gt_ignore, proto)
        ims.append(im)
        orders.append(order)
        cares.append(dont_care)
        compares.append(compare)
    packed = [PackedImage(im.gt, dc, im.det, np.ones(len(im.det))) for im, dc in zip(ims, cares, strict=True)]
    geometry = evaluate(packed, geo_proto, keep_iou=False)  # don't-care dets, greedy GT-major pairs
    per_image: list[SpottingImageResult] = []
    all_scores: list[float] = []
    all_hits: list[bool] = []
    for im, order, compare, res in zip(ims, orders, compares, geometry.per_image, strict=True):
        pairs = [(g, d, transcription_match(compare[g], im.det_texts[d], proto)) for g, d in res.pairs]
        hit_dets = {d for _, d, ok in pairs if ok}
        per_image.append(
            SpottingImageResult(
                gt_care=res.gt_care,
                det_care=res.det_care,
                hits=sum(ok for _, _, ok in pairs),
                gt_dontcare=res.gt_dontcare,
                det_dontcare=res.det_dontcare,
                pairs=pairs,
                order=order,
                det_texts=im.det_texts,
                gt_compared=compare,
            )
        )
        care = np.flatnonzero(~res.det_dontcare).tolist()
        all_scores += [float(im.scores[d]) for d in care]
        all_hits += [d in hit_dets for d in care]
    counts = {
        "images": len(per_image),
        "gt_care": sum(r.gt_care for r in per_image),
        "det_care": sum(r.det_care for r in per_image),
        "hits": sum(r.hits for r in per_image),
    }
    recall = counts["hits"] / counts["gt_care"] if counts["gt_care"] else 0.0
    precision = counts["hits"] / counts["det_care"] if counts["det_care"] else 0.0
    det_only = evaluate(
        [PackedImage(im.gt, im.gt_ignore | _hashes(im.gt_texts), im.det, np.ones(len(im.det))) for im in ims],
        geo_proto,
        keep_iou=False,
    )
    return SpottingResult(
        precision=precision,
        recall=recall,
        hmean=_hmean(precision, recall),
        per_image=per_image,
        counts=counts,
        protocol=proto,
        ap=_average_precision(all_scores, all_hits, counts["gt_care"]) if confidences else None,
        detection_only={"precision": det_only.precision, "recall": det_only.recall, "hmean": det_only.hmean},
    )


def _hashes(texts: Sequence[str]) -> np.ndarray:
    return np.array([t == DONT_CARE for t in texts], dtype=bool).reshape(-1)  # (G,)


# --------------------------------------------------------------------------------------------- files


class SpottingFileError(ValueError):
    """A line of a spotting GT or submission file the protocol cannot read; the message names file:line."""


_INT = re.compile(r"\s*-?[0-9]+\s*", re.ASCII)  # the RRC regex's coordinate: integers only
_QUOTED = re.compile(r"^\s*\"(.*)\"\s*$", re.DOTALL)  # the RRC: a transcription wrapped in double quotes
_FLOAT = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*", re.ASCII)


def _unquote(text: str) -> str:
    """The RRC rule: a transcription in double quotes loses them, then `\\\\` -> `\\` and `\\"` -> `"`."""
    quoted = _QUOTED.match(text)
    if quoted is None:
        return text
    return quoted.group(1).replace("\\\\", "\\").replace('\\"', '"')


@dataclass
class SpottingFile:
    """A parsed file: polygons in file order, transcriptions, confidences, source lines, wrong orientation."""

    polygons: PackedPolygons
    texts: list[str]
    scores: np.ndarray  # (N,) float64
    lines: np.ndarray  # (N,) int64
    misoriented: int  # lines the official script would refuse for their orientation (normalised here)


def _lines(text: str) -> Iterable[tuple[int, str]]:
    """(1-based line number, line without `\\r`) of every non-empty line, split on `\\n` as the script."""
    for line_no, line in enumerate(text.split("\n"), start=1):
        line = line.replace("\r", "")
        if line.strip():
            yield line_no, line


def parse_rrc_e2e(text: str, source: str, confidences: bool = False) -> SpottingFile:
    """IC15 end-to-end lines `x1,y1,...,x4,y4[,confidence],transcription` (GT and submissions alike).

    Integer coordinates; everything after the 8th comma (9th with a confidence) is the transcription, kept as
    the script keeps it (commas, digits such as `06`, spaces), quotes removed and `\\\\` / `\\"` unescaped
    when it is wrapped in double quotes. Counter-clockwise quads are turned clockwise and counted.
    """
    n_head = 9 if confidences else 8
    layout = "x1,y1,...,x4,y4" + (",confidence" if confidences else "") + ",transcription"
    coords: list[int] = []
    texts: list[str] = []
    scores: list[float] = []
    line_nos: list[int] = []
    for line_no, line in _lines(text):
        where = f"{source}:{line_no}"
        fields = line.split(",", n_head)
        head = fields[:n_head]
        k = next((i for i, f in enumerate(head[:8]) if not _INT.fullmatch(f)), min(8, len(fields)))
        if k < 8:  # fewer than 8 leading integers
            if k == len(fields):
                raise SpottingFileError(
                    f"{where}: expected {layout}: {k} coordinate(s) and no transcription (8 integers needed)"
                )
            bad = fields[k].strip()
            if _FLOAT.fullmatch(bad):
                raise SpottingFileError(
                    f"{where}: coordinate {k + 1} {bad[:40]!r} is not an integer ({layout}; the official "
                    "script accepts integer coordinates only)"
                )
            raise SpottingFileError(
                f"{where}: expected {layout}: found {k} integer coordinate(s) before {bad[:40]!r} (8 needed)"
            )
        if len(fields) <= n_head:
            raise SpottingFileError(f"{where}: expected {layout}: the transcription is missing")
        if confidences:
            if not _FLOAT.fullmatch(fields[8]):
                raise SpottingFileError(f"{where}: confidence {fields[8].strip()[:40]!r} is not a number")
            scores.append(float(fields[8]))
        else:
            scores.append(1.0)
        coords += map(int, head[:8])
        texts.append(_unquote(fields[n_head]))
        line_nos.append(line_no)
    flat = np.array(coords, dtype=np.float64).reshape(-1, 2)  # (4 N, 2)
    packed, ccw = clockwise_packed(PackedPolygons(flat, np.full(len(texts), 4, dtype=np.int64)))
    return SpottingFile(packed, texts, np.array(scores), np.array(line_nos, dtype=np.int64), int(ccw.sum()))


_TT_SEP = ",####"  # AdelaiDet's separator between the coordinates and the transcription


def parse_adet(text: str, source: str) -> SpottingFile:
    """AdelaiDet's polygon lines `x1,y1,...,xn,yn,####transcription` (Total-Text / CTW1500 GT and results).

    Coordinates are numbers (floats allowed, as AdelaiDet parses them), an even count of at least 6; the
    transcription is stripped and unquoted. A polygon in the orientation AdelaiDet refuses (shapely `is_ccw`)
    is kept (orientation does not change a region) and counted.
    """
    coords: list[float] = []
    sizes: list[int] = []
    texts: list[str] = []
    line_nos: list[int] = []
    for line_no, line in _lines(text):
        where = f"{source}:{line_no}"
        head, sep, rec = line.strip().partition(_TT_SEP)
        if not sep:
            raise SpottingFileError(f"{where}: expected x1,y1,...,xn,yn,####transcription (no ',####')")
        values = head.split(",")
        for i, f in enumerate(values, start=1):
            if not _FLOAT.fullmatch(f):
                raise SpottingFileError(f"{where}: coordinate {i} {f.strip()[:40]!r} is not a number")
        if len(values) % 2 or len(values) < 6:
            raise SpottingFileError(
                f"{where}: expected an even number (>= 6) of coordinates before ',####', found {len(values)}"
            )
        coords += map(float, values)
        sizes.append(len(values) // 2)
        texts.append(_unquote(rec.strip()))
        line_nos.append(line_no)
    packed = PackedPolygons(np.array(coords).reshape(-1, 2), np.array(sizes, dtype=np.int64))
    refused = int((edge_sums(packed) < 0).sum())  # shapely is_ccw True: AdelaiDet raises
    return SpottingFile(packed, texts, np.ones(len(texts)), np.array(line_nos, dtype=np.int64), refused)
