"""Recognition anchor: rapidocr_onnxruntime's recogniser (PP-OCRv4 rec, "what people use today") next to
CLIP4STR-B/16 on the same word crops of the six ICDAR 2015 fixture images (`../shared/fixtures/icdar2015/`,
every non-ignored transcribed instance cropped with `tcm.data.crops.crop_word`), one process, same crops.

Time per crop (median of interleaved repeats, batch 1 for both, CPU) and word accuracy / 1 - NED on the
36-character protocol (`pipelines.tasks.recognition.word_scores`). CLIP4STR runs with random weights (nothing
is downloaded offline), so its accuracy is ~0 by construction: the row shows its cost, not its quality.
Needs the `bench` extra (rapidocr_onnxruntime==1.4.4). Writes the `## Recognition anchor` section of
benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/rec_anchor.py [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.tasks.recognition import word_scores
from tcm.data.crops import DegenerateError, crop_word
from tcm.data.formats.icdar2015 import Icdar2015
from tcm.data.transforms import decode_image

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "icdar2015"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Recognition anchor"


def fixture_crops() -> list[tuple[np.ndarray, str]]:
    """(BGR crop, text) of every transcribed, non-ignored instance of the six fixture images."""
    out = []
    for image_path in sorted((FIXTURE / "images").glob("*.jpg")):
        gt = FIXTURE / "gts" / f"gt_{image_path.stem}.txt"
        image = decode_image(image_path.read_bytes())
        for inst in Icdar2015().parse(gt.read_bytes(), str(gt)):
            if inst.ignore or not inst.text:
                continue
            try:
                out.append((crop_word(image, inst.points), inst.text))
            except DegenerateError:
                continue
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not FIXTURE.is_dir():
        raise SystemExit(f"fixture not found at {FIXTURE} (only on project machines and CI)")
    from rapidocr_onnxruntime import RapidOCR

    from tcm.recognition.build import build_recognizer
    from tcm.recognition.config import RecognizerConfig
    from tcm.recognition.preprocess import preprocess

    torch.set_num_threads(1)
    crops = fixture_crops()
    engine = RapidOCR()
    cfg = RecognizerConfig()  # CLIP4STR-B/16, random weights
    model = build_recognizer(cfg, pretrained=False).eval()

    def rapid(crop: np.ndarray) -> str:
        result, _ = engine(crop, use_det=False, use_cls=False, use_rec=True)
        return str(result[0][0]) if result else ""

    @torch.inference_mode()
    def clip4str(crop: np.ndarray) -> str:
        texts, _ = model.tokenizer.decode(model(preprocess([crop[:, :, ::-1].copy()], cfg))["logits"])
        return texts[0]

    times: dict[str, list[float]] = {"rapidocr": [], "clip4str": []}
    preds: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, fn in (("rapidocr", rapid), ("clip4str", clip4str)):
            start = time.perf_counter()
            preds[name] = [fn(c) for c, _ in crops]
            times[name].append((time.perf_counter() - start) / len(crops))
    rows = []
    for name, label in (("rapidocr", "rapidocr_onnxruntime 1.4.4 rec (PP-OCRv4)"),
                        ("clip4str", "CLIP4STR-B/16, random weights")):  # fmt: skip
        s = word_scores(list(zip(preds[name], [t for _, t in crops], strict=True)))
        rows.append((label, len(crops), 1e3 * statistics.median(times[name]), s["accuracy"], s["one_minus_ned"]))
        print(f"{label}: {rows[-1][2]:.1f} ms/crop, accuracy {s['accuracy']:.3f}, 1-NED {s['one_minus_ned']:.3f}")
    ratio = rows[1][2] / rows[0][2]
    print(f"CLIP4STR-B / rapidocr time per crop: {ratio:.1f}")
    text = "\n".join([
        SECTION, "",
        "`benchmarks/rec_anchor.py`: rapidocr_onnxruntime's recogniser vs CLIP4STR-B/16 (predict-and-refine, cross",
        f"branch on) on the same {len(crops)} word crops of the six IC15 fixture images (`tcm.data.crops`), batch 1,",
        f"CPU, one thread for torch; median of {args.repeats} interleaved repeats; host {os.cpu_count()} CPUs, load",
        f"average {os.getloadavg()[0]:.1f}. Accuracy / 1-NED on the 36-character protocol. CLIP4STR has RANDOM",
        "weights here (no download offline): its accuracy is ~0 by construction, the row measures cost only.",
        "", "| recogniser | crops | ms / crop | word accuracy | 1 - NED |", "|---|---|---|---|---|",
        *[f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.3f} | {r[4]:.3f} |" for r in rows],
        "", f"Time ratio CLIP4STR-B / rapidocr: {ratio:.1f}.", "",
    ])  # fmt: skip
    if not args.no_write:
        old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
        new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
        RESULTS.write_text(new)


if __name__ == "__main__":
    main()
