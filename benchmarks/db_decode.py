"""DB decode (probability map -> boxes): ours (`tcm.heads.db_codec.DBCodec.decode`) against rapidocr_onnxruntime's
`DBPostProcess` (PaddleOCR's DB post-processing) on the same maps, in the same process.

Not a test. Needs the `bench` extra (`.venv/bin/pip install -e '.[bench]'`, i.e. rapidocr_onnxruntime==1.4.4).
Maps: synthetic 1280x736 probability maps with ~50 rotated text blobs (soft edges, like a trained network's),
and, when ../shared/fixtures/icdar2015 exists, the perfect maps of its ground truth (DBCodec.targets_as_outputs).
Both decoders get the same parameters (bin 0.3, box 0.3, unclip 1.5, min size 3, quad, fast score); ours reads
logits (what the head outputs), theirs the probabilities. Reports box agreement (every box matched one-to-one
with IoU >= 0.99) and the time ratio ours / theirs (median of interleaved repeats). Writes the `## DB decode`
section of benchmarks/RESULTS.md (other sections are left as they are).

    .venv/bin/python benchmarks/db_decode.py [--repeats 30] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import shapely

from tcm.config import DBHeadConfig
from tcm.heads.db_codec import DBCodec

REPO = Path(__file__).resolve().parents[1]
IC15 = REPO / ".." / "shared" / "fixtures" / "icdar2015"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## DB decode"
IOU_MIN = 0.99  # "same boxes"


def synthetic_map(rng: np.random.Generator, H: int = 736, W: int = 1280, n: int = 50) -> np.ndarray:
    """(H, W) float32 probability map: n separate rotated soft-edged blobs of text-like sizes, low background."""
    canvas = np.zeros((H, W), np.float32)
    taken = np.zeros((H, W), np.uint8)  # blobs (grown by a margin) already placed
    placed = 0
    while placed < n:
        h = float(rng.uniform(8, 40))
        w = h * float(rng.uniform(1.5, 8))
        center = (float(rng.uniform(w / 2, W - w / 2)), float(rng.uniform(h / 2, H - h / 2)))
        angle = float(rng.uniform(-30, 30))
        box = np.round(cv2.boxPoints((center, (w, h), angle))).astype(np.int32)
        halo = np.round(cv2.boxPoints((center, (w + 12, h + 12), angle))).astype(np.int32)
        probe = np.zeros_like(taken)
        cv2.fillPoly(probe, [halo], 1)
        if (probe & taken).any():
            continue  # would touch another blob: the two would merge into one contour
        taken |= probe
        cv2.fillPoly(canvas, [box], float(rng.uniform(0.6, 0.95)))
        placed += 1
    prob = cv2.GaussianBlur(canvas, (0, 0), 1.5)  # soft edges, as a network's sigmoid output
    return np.clip(prob + rng.uniform(0, 0.05, prob.shape).astype(np.float32), 0, 1)


def ic15_maps(codec: DBCodec) -> list[np.ndarray]:
    if not IC15.is_dir():
        return []
    from tcm.data.formats import get_format

    fmt = get_format("icdar2015")
    maps = []
    for image in sorted((IC15 / "images").glob("*.jpg")):
        gt = fmt.parse((IC15 / "gts" / f"gt_{image.stem}.txt").read_bytes(), image.name)
        H, W = cv2.imread(str(image), cv2.IMREAD_IGNORE_ORIENTATION).shape[:2]
        targets = codec.encode([g.points for g in gt], [g.ignore for g in gt], H, W)
        logits = codec.targets_as_outputs(targets)["prob_logits"][0]
        maps.append(1.0 / (1.0 + np.exp(-logits.astype(np.float64))))  # (H, W) probabilities
    return [m.astype(np.float32) for m in maps]


def to_logits(prob: np.ndarray) -> np.ndarray:
    p = np.clip(prob.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p)).astype(np.float32)


def match(ours: list[np.ndarray], theirs: list[np.ndarray]) -> tuple[int, float]:
    """Greedy one-to-one matching by IoU; returns (#pairs with IoU >= IOU_MIN, min IoU over the best pairs)."""
    if not ours or not theirs:
        return 0, 1.0 if not ours and not theirs else 0.0
    a, b = shapely.polygons(list(ours)), shapely.polygons(list(theirs))
    inter = shapely.area(shapely.intersection(a[:, None], b[None, :]))  # (N, M)
    union = shapely.area(a)[:, None] + shapely.area(b)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
    used, good, worst = set(), 0, 1.0
    for i in np.argsort(-iou.max(axis=1)):
        j = int(np.argmax(np.where([k in used for k in range(iou.shape[1])], -1, iou[i])))
        if j in used:
            continue
        used.add(j)
        worst = min(worst, float(iou[i, j]))
        good += iou[i, j] >= IOU_MIN
    return good, worst


def run(name: str, maps: list[np.ndarray], repeats: int, cfg: DBHeadConfig) -> dict:
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

    ours_codec = DBCodec(cfg)
    theirs = DBPostProcess(
        thresh=cfg.bin_thresh, box_thresh=cfg.box_thresh, max_candidates=cfg.max_candidates,
        unclip_ratio=cfg.unclip_ratio, score_mode="fast", use_dilation=False,
    )
    logits = [to_logits(p) for p in maps]
    preds = [p[None, None] for p in maps]  # (1, 1, H, W) as rapidocr takes them
    n_ours = n_theirs = n_good = 0
    worst = 1.0
    score_gap = 0.0
    for lg, pr, prob in zip(logits, preds, maps, strict=True):
        dets = ours_codec.decode({"prob_logits": lg[None]})
        boxes, scores = theirs(pr, prob.shape)
        good, w = match([d.points for d in dets], [b.astype(np.float64) for b in boxes])
        n_ours, n_theirs, n_good, worst = n_ours + len(dets), n_theirs + len(boxes), n_good + good, min(worst, w)
        if len(dets) == len(scores) and scores:
            score_gap = max(score_gap, float(np.max(np.abs(np.sort([d.score for d in dets]) - np.sort(scores)))))
    t_ours, t_theirs = [], []
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        start = time.perf_counter()
        for lg in logits:
            ours_codec.decode({"prob_logits": lg[None]})
        t_ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        for pr, prob in zip(preds, maps, strict=True):
            theirs(pr, prob.shape)
        t_theirs.append(time.perf_counter() - start)
    ours_ms = statistics.median(t_ours) / len(maps) * 1e3
    theirs_ms = statistics.median(t_theirs) / len(maps) * 1e3
    return {
        "name": name, "maps": len(maps), "size": f"{maps[0].shape[1]}x{maps[0].shape[0]}",
        "ours": n_ours, "theirs": n_theirs, "same": n_good, "worst_iou": worst, "score_gap": score_gap,
        "ours_ms": ours_ms, "theirs_ms": theirs_ms, "ratio": ours_ms / theirs_ms,
    }


def section(rows: list[dict], repeats: int) -> str:
    lines = [
        SECTION,
        "",
        "`benchmarks/db_decode.py`: `DBCodec.decode` (quad mode, from logits) vs rapidocr_onnxruntime 1.4.4",
        "`DBPostProcess` (from probabilities) on the same maps, same parameters (bin 0.3, box 0.3, unclip 1.5,",
        f"min size 3, fast score). Time = median of {repeats} interleaved repeats, per map, one process;",
        f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end (absolute times move with",
        "the load, the ratio much less).",
        "\"same\" = boxes matched one-to-one with IoU >= 0.99.",
        "",
        "| maps | n | size | boxes ours / theirs | same | worst IoU | max score gap | ours ms | theirs ms "
        "| ratio ours/theirs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['maps']} | {r['size']} | {r['ours']} / {r['theirs']} | {r['same']} | "
            f"{r['worst_iou']:.4f} | {r['score_gap']:.1e} | {r['ours_ms']:.2f} | {r['theirs_ms']:.2f} | "
            f"{r['ratio']:.2f} |"
        )
    lines.append("")
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace (or append) only the `## DB decode` section of RESULTS.md."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--maps", type=int, default=8, help="synthetic maps")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    cfg = DBHeadConfig()
    rng = np.random.default_rng(0)
    rows = [run("synthetic, ~50 blobs", [synthetic_map(rng) for _ in range(args.maps)], args.repeats, cfg)]
    fixture = ic15_maps(DBCodec(cfg))
    if fixture:
        rows.append(run("IC15 fixture, perfect maps", fixture, args.repeats, cfg))
    text = section(rows, args.repeats)
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
