"""CLIP4STR-B vs its visual branch alone (`cross_modal=False`: ViT-B/16 + one PARSeq decoder, no text encoder,
no cross decoder): cost of one training step (permutation loss over K=6 orders + backward) and of inference
(AR predict + 1 cloze refinement; with the cross branch also AR cross predict, its refinement and two
text-encoder passes), at 224x224, on CPU, as ratios measured in the same process (interleaved rounds, a warm-up,
then the median). Writes only the `## Recognition model step` section of benchmarks/RESULTS.md.

Inference runs every one of the 26 AR steps (`early_stop=False`): random weights rarely emit [E], and the
fixed-step path is the worst case the reference states (26 visual + 26 cross steps + 2 refinements + 2 text
passes). Random initialisation (weights do not change the cost).

    .venv/bin/python benchmarks/rec_step.py [--batch 2] [--warmup 1] [--repeats 3] [--threads N] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from tcm.recognition.build import build_recognizer
from tcm.recognition.config import RecognizerConfig
from tcm.recognition.model import CLIP4STR
from tcm.recognition.optim import param_groups

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Recognition model step"
WORDS = ["Recognise", "CLIP4STR", "text", "42", "benchmark", "open-clip", "ViT", "PARSeq"]


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall s, process CPU s) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def write_results(section: str, text: str) -> None:
    """Replace (or append) `section` (its `## ` heading line) of benchmarks/RESULTS.md, the others untouched."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(new)


def publish(section: str, lines: list[str], no_write: bool) -> None:
    """Print the section's lines and, unless `no_write`, put them into benchmarks/RESULTS.md."""
    text = "\n".join(lines) + "\n"
    print(text)
    if not no_write:
        write_results(section, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)  # small: a ViT-B/16 train step takes seconds on CPU
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    models: dict[str, CLIP4STR] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no CLIP weights" is expected here
        for name, cross in (("visual", False), ("clip4str", True)):
            cfg = RecognizerConfig(cross_modal=cross)
            models[name] = build_recognizer(cfg)
            param_groups(models[name], cfg, 1e-4, 0.2)  # what training builds (the text freeze is in the model)
    cfg = RecognizerConfig()
    images = torch.randn(args.batch, 3, *cfg.image_size)
    labels = [WORDS[b % len(WORDS)] for b in range(args.batch)]

    def train_step(model: CLIP4STR) -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        model.loss(images, labels, generator=torch.Generator().manual_seed(0))["loss"].backward()

    def inference(model: CLIP4STR) -> None:
        model.eval()
        with torch.inference_mode():
            model(images, early_stop=False)

    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in range(args.warmup + args.repeats):
        for phase, fn in (("train", train_step), ("inference", inference)):
            for name, model in models.items():
                t = timed(lambda fn=fn, model=model: fn(model))
                if r >= args.warmup:
                    samples.setdefault((phase, name), []).append(t)
                print(f"round {r} {phase:9s} {name:8s} wall {t[0]:7.2f} s  cpu {t[1]:7.2f} s", flush=True)

    rows = []
    for phase in ("train", "inference"):
        wall = {n: statistics.median(s[0] for s in samples[(phase, n)]) for n in models}
        cpu = {n: statistics.median(s[1] for s in samples[(phase, n)]) for n in models}
        rows.append((phase, wall, cpu, wall["clip4str"] / wall["visual"], cpu["clip4str"] / cpu["visual"]))

    def millions(model: CLIP4STR, trainable: bool) -> float:
        return sum(p.numel() for p in model.parameters() if p.requires_grad == trainable) / 1e6

    full, visual = models["clip4str"], models["visual"]
    lines = [
        SECTION,
        "",
        f"`benchmarks/rec_step.py`: CLIP4STR-B (ViT-B/16 at 224x224, QuickGELU, random init) at batch {args.batch},"
        f" CPU, {args.threads} thread(s): the full model vs its visual branch alone (`cross_modal=False`).",
        f"Median of {args.repeats} interleaved rounds after {args.warmup} warm-up. Train = `model.loss` (K=6"
        " permutations; with the cross branch the text encoder and cross decoder run once per permutation) +"
        " backward; inference = `model(images, early_stop=False)` under `torch.inference_mode()`: 26 AR steps"
        " per branch + 1 cloze refinement (worst case).",
        f"Parameters: visual branch {millions(visual, True):.1f} M trainable; CLIP4STR-B"
        f" {millions(full, True):.1f} M trainable + {millions(full, False):.1f} M frozen (text embeddings and"
        f" blocks 0-5; released: 114 M + 44.3 M). Host: {os.cpu_count()} CPUs, load average"
        f" {os.getloadavg()[0]:.1f} at the end. The host is shared: CPU seconds (`time.process_time`) are the",
        "figure of record; wall times move with the other load.",
        "",
        "| step | visual wall s | CLIP4STR wall s | visual CPU s | CLIP4STR CPU s | ratio (wall) | ratio (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for phase, wall, cpu, r_wall, r_cpu in rows:
        lines.append(
            f"| {phase} | {wall['visual']:.2f} | {wall['clip4str']:.2f} | {cpu['visual']:.2f} |"
            f" {cpu['clip4str']:.2f} | {r_wall:.2f}x | {r_cpu:.2f}x |"
        )
    lines += ["", f"Command: `python benchmarks/rec_step.py --batch {args.batch} --repeats {args.repeats}"
              f" --threads {args.threads}`."]
    publish(SECTION, lines, args.no_write)


if __name__ == "__main__":
    main()
