"""ONNX Runtime vs PyTorch for the CLIP4STR recogniser (issue 14): the same batch of rendered word crops through
`OnnxRecognizer` (the two exported sessions + the Python BPE step between them) and through the PyTorch model
(`model(images, early_stop=False)` + `tokenizer.decode`: the fixed 26 AR steps per branch the graphs hold, +1
cloze refinement), at the tiny and the full ViT-B/16 size, random weights (seeded; weights do not change the
cost). Same outputs asserted (identical strings, max abs diff on the logits <= 1e-4) before any timing.

Both runtimes get the same thread count (torch.set_num_threads / intra_op_num_threads); interleaved rounds after
a warm-up, the median. Writes only the `## Recognition ONNX Runtime vs PyTorch` section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/rec_onnx.py [--batch 8] [--repeats 3] [--threads 1] [--sizes tiny full] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.rec_step import publish, timed  # noqa: E402
from tcm.data.synth_words import render_word  # noqa: E402
from tcm.recognition.build import build_recognizer  # noqa: E402
from tcm.recognition.config import RecognizerConfig  # noqa: E402
from tcm.recognition.export import export_recognizer  # noqa: E402
from tcm.recognition.onnx_runtime import OnnxRecognizer  # noqa: E402
from tcm.recognition.preprocess import preprocess  # noqa: E402

SECTION = "## Recognition ONNX Runtime vs PyTorch"
SIZES = {"tiny": RecognizerConfig.tiny, "full": RecognizerConfig}  # full = CLIP4STR-B (ViT-B/16, 224x224)


def measure(size: str, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no CLIP weights" is expected here
        cfg = SIZES[size]()
        model = build_recognizer(cfg).eval()
    rng = np.random.default_rng(0)
    images = preprocess([render_word(rng)[0] for _ in range(args.batch)], cfg)  # (B, 3, H, W)
    export_s, _ = timed(lambda: export_recognizer(model, workdir / size))
    rec = OnnxRecognizer(workdir / size, threads=args.threads)

    def pytorch() -> tuple[list[str], list[float]]:
        with torch.inference_mode():
            return model.tokenizer.decode(model(images, early_stop=False)["logits"])

    # same outputs first
    with torch.inference_mode():
        expected = model(images, early_stop=False)
    got = rec.logits(images.numpy())
    diff = max(float(np.abs(got[k] - v.numpy()).max()) for k, v in expected.items())
    assert diff <= 1e-4, f"{size}: max abs diff {diff} on the logits"
    assert rec(images)[0] == pytorch()[0], f"{size}: decoded strings differ"

    samples: dict[str, list[tuple[float, float]]] = {"pytorch": [], "onnxruntime": []}
    for r in range(args.warmup + args.repeats):
        for name, fn in (("pytorch", pytorch), ("onnxruntime", lambda: rec(images))):
            t = timed(fn)
            if r >= args.warmup:
                samples[name].append(t)
            print(f"{size} round {r} {name:11s} wall {t[0]:7.3f} s  cpu {t[1]:7.3f} s", flush=True)
    row = {"diff": diff, "export_s": export_s}
    for name, s in samples.items():
        row[f"{name}_wall"] = statistics.median(x[0] for x in s)
        row[f"{name}_cpu"] = statistics.median(x[1] for x in s)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)  # word crops per call, as one detection's words
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)  # small: a ViT-B/16 predict-and-refine takes seconds
    parser.add_argument("--threads", type=int, default=1)  # one: the host is shared; both runtimes alike
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            rows[size] = measure(size, args, Path(tmp))

    lines = [
        SECTION,
        "",
        f"`benchmarks/rec_onnx.py`: {args.batch} rendered word crops (`tcm.data.synth_words`) per call, CPU,"
        f" {args.threads} thread(s) for both runtimes; PyTorch = `model(images, early_stop=False)` +"
        " `tokenizer.decode` under `torch.inference_mode()`; ONNX Runtime = `OnnxRecognizer` (CPUExecutionProvider,"
        " the visual session, the Python BPE step, the cross session, the same decode). 26 AR steps per branch + 1"
        " cloze refinement (random weights; the graphs' fixed steps). Identical strings and logits within 1e-4"
        f" asserted first. Median of {args.repeats} interleaved rounds after {args.warmup} warm-up. Host:"
        f" {os.cpu_count()} CPUs, shared, load average {os.getloadavg()[0]:.1f} at the end: CPU seconds"
        " (`time.process_time`) are the figure of record; wall times move with the other load.",
        "",
        "| size | max abs diff | export s | PyTorch wall s | ORT wall s | PyTorch CPU s | ORT CPU s |"
        " speed-up (wall) | speed-up (CPU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size, r in rows.items():
        lines.append(
            f"| {size} | {r['diff']:.1e} | {r['export_s']:.0f} | {r['pytorch_wall']:.3f} | {r['onnxruntime_wall']:.3f} |"
            f" {r['pytorch_cpu']:.3f} | {r['onnxruntime_cpu']:.3f} | {r['pytorch_wall'] / r['onnxruntime_wall']:.2f}x |"
            f" {r['pytorch_cpu'] / r['onnxruntime_cpu']:.2f}x |"
        )
    lines += ["", f"Command: `python benchmarks/rec_onnx.py --batch {args.batch} --repeats {args.repeats}"
              f" --threads {args.threads} --sizes {' '.join(args.sizes)}`."]
    publish(SECTION, lines, args.no_write)


if __name__ == "__main__":
    main()
