"""TCM-DB vs the baseline switch (CLIP RN50 + FPN-C + DB head, no TCM parts): cost of one training step
(forward + loss + backward) and of inference, at the paper's 640 x 640 crops, batch 2, on CPU, as ratios
measured in the same process (interleaved: baseline, TCM, baseline, TCM, ...; a few warm-up rounds, then the
median of N). Writes only the `## Model step` section of benchmarks/RESULTS.md.

Training mirrors the real recipe: text tower frozen (lr factor 0 via tcm.optim.param_groups), everything else
trainable. Random initialisation (weights do not change the cost).

    .venv/bin/python benchmarks/model_step.py [--size 640] [--batch 2] [--warmup 1] [--repeats 3] [--threads N]
                                              [--no-write]
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

import numpy as np
import torch

from tcm.build import build_codec, build_detector
from tcm.config import DetectorConfig, TCMConfig
from tcm.detector import Detector
from tcm.optim import param_groups

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Model step"
TARGETS = {"train": 1.3, "inference": 1.2}  # issue 3: TCM-DB / baseline


def make_targets(cfg: DetectorConfig, batch: int, size: int) -> dict[str, torch.Tensor]:
    """DB targets for a few text boxes per image (their content does not change the cost)."""
    codec = build_codec(cfg.head)
    rng = np.random.default_rng(0)
    maps = []
    for _ in range(batch):
        boxes = []
        for _ in range(8):
            x, y = rng.uniform(0, size - 160), rng.uniform(0, size - 40)
            w, h = rng.uniform(40, 150), rng.uniform(12, 36)
            boxes.append(np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]]))
        maps.append(codec.encode(boxes, [False] * len(boxes), size, size))
    return {k: torch.from_numpy(np.stack([m[k] for m in maps])) for k in maps[0]}


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall s, process CPU s) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=640)  # paper crop
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)  # small: one RN50 step at 640 takes seconds on CPU
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    models: dict[str, Detector] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no CLIP weights" is expected here
        for name, enabled in (("baseline", False), ("tcm", True)):
            cfg = DetectorConfig(tcm=TCMConfig(enabled=enabled))
            model = build_detector(cfg, pretrained=False)
            param_groups(model, 1e-4, 1e-4)  # freezes the text tower as training does
            models[name] = model
    cfg = DetectorConfig()
    images = torch.randn(args.batch, 3, args.size, args.size)
    targets = make_targets(cfg, args.batch, args.size)

    def train_step(model: Detector) -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        model.loss(model(images), targets)["loss"].backward()

    def inference(model: Detector) -> None:
        model.eval()
        with torch.inference_mode():
            model(images)

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
        rows.append((phase, wall, cpu, wall["tcm"] / wall["baseline"], cpu["tcm"] / cpu["baseline"]))
    params = {n: sum(p.numel() for p in m.parameters()) / 1e6 for n, m in models.items()}
    load = os.getloadavg()[0]
    lines = [
        SECTION,
        "",
        f"`benchmarks/model_step.py`: CLIP RN50 + FPN-C + DB head at {args.size}x{args.size}, batch {args.batch}, CPU,"
        f" {args.threads} thread(s); TCM-DB (K=4, LPG + VPG + context decoder, text tower frozen) vs the baseline",
        f"switch (`tcm.enabled=False`). Median of {args.repeats} interleaved rounds after {args.warmup} warm-up;"
        f" train = forward + loss + backward, inference = forward under `torch.inference_mode()`.",
        f"Parameters: baseline {params['baseline']:.1f} M, TCM {params['tcm']:.1f} M (text tower"
        f" {sum(p.numel() for p in models['tcm'].text_encoder.clip.parameters()) / 1e6:.1f} M of them, frozen)."
        f" Host: {os.cpu_count()} CPUs, load average {load:.1f} at the end. The host is shared: CPU seconds",
        "(`time.process_time`) are the figure of record; wall times move with the other load.",
        "",
        "| step | baseline wall s | TCM wall s | baseline CPU s | TCM CPU s | ratio (wall) | ratio (CPU) | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase, wall, cpu, r_wall, r_cpu in rows:
        lines.append(
            f"| {phase} | {wall['baseline']:.2f} | {wall['tcm']:.2f} | {cpu['baseline']:.2f} | {cpu['tcm']:.2f} |"
            f" {r_wall:.2f}x | {r_cpu:.2f}x | <= {TARGETS[phase]}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
        new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
        RESULTS.write_text(new)


if __name__ == "__main__":
    main()
