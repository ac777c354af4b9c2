"""`tcm spot` throughput: the Ray Data pipeline (detector actor pool -> crop tasks -> recogniser actor pool,
streaming) against `spot_images_local` (the same two models, crops, NMS and recogniser, one image after the
other in one process), on the same synthetic images, same run. The outputs (spots.jsonl records) are asserted
identical; the images/s ratio goes to benchmarks/RESULTS.md (section "## Spotting throughput").

Models: the tiny detector and tiny recogniser presets with random weights (no weights are downloaded); random
weights find about one region per image, so the figure weighs detection more than a trained pair would.
Ray's time includes starting its actors (Ray itself is started before the clock), as a `tcm spot` run pays it.

    .venv/bin/python benchmarks/spot_throughput.py --images 24 --side 256
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import tempfile
import time
from pathlib import Path

SECTION = "## Spotting throughput"


def write_section(path: Path, body: str) -> None:
    """Replace (or append) this benchmark's section of path, every other section as it was."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    section = f"{SECTION}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n" if pattern.search(text) else (
        text.rstrip("\n") + "\n\n" + section
    )
    path.write_text(text, encoding="utf-8")


def make_models(root: Path) -> tuple[str, str]:
    import torch

    from pipelines.checkpoint import save_checkpoint
    from tcm.build import build_detector
    from tcm.config import DetectorConfig
    from tcm.recognition.build import build_recognizer
    from tcm.recognition.config import RecognizerConfig

    torch.manual_seed(0)
    det, rec = DetectorConfig.tiny(), RecognizerConfig.tiny()
    save_checkpoint(root / "det", build_detector(det, pretrained=False), det)
    save_checkpoint(root / "rec", build_recognizer(rec, pretrained=False), rec)
    return str(root / "det"), str(root / "rec")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=24, help="synthetic images (IC15 layout)")
    ap.add_argument("--side", type=int, default=256, help="image width and height, and the detector's test size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"), help="markdown file to update")
    args = ap.parse_args()

    import ray

    from pipelines.spot import SpotSettings, spot_images, spot_images_local
    from tcm.data.synth import write_dataset

    settings = SpotSettings(long_side=args.side, short_side=args.side)
    with tempfile.TemporaryDirectory(prefix="tcm-spot-bench-") as tmp:
        root = Path(tmp)
        det, rec = make_models(root)
        write_dataset("icdar2015", root / "data", args.images, seed=args.seed, split="test", height=args.side, width=args.side)
        folder = root / "data" / "test" / "images"
        paths = sorted(folder.iterdir())

        t0 = time.perf_counter()
        local = spot_images_local(det, rec, paths, settings)
        local_s = time.perf_counter() - t0

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            t0 = time.perf_counter()
            piped = spot_images(det, rec, str(folder), settings)
            ray_s = time.perf_counter() - t0
        finally:
            ray.shutdown()

    a, b = [r.record() for r in local], [r.record() for r in piped]
    assert a == b, "the Ray pipeline and the local loop disagree"
    words = sum(len(r["spots"]) for r in a)
    ratio = local_s / ray_s
    body = f"""
`benchmarks/spot_throughput.py`: `tcm spot`'s Ray Data pipeline (1 detector actor, crop tasks, 1 recogniser
actor; `SpotSettings` defaults) vs `spot_images_local` (one process), tiny detector + tiny recogniser with random
weights, {args.images} synthetic {args.side}x{args.side} images ({words} words read), outputs asserted identical.
Ray's time includes its actors' start (Ray itself started before the clock). Host: {os.cpu_count()} CPUs,
{platform.machine()}, load average {os.getloadavg()[0]:.1f} at the end (the host is shared: wall times move with
the other load).

| path | seconds | images/s |
|---|---|---|
| local loop | {local_s:.2f} | {args.images / local_s:.2f} |
| Ray Data pipeline | {ray_s:.2f} | {args.images / ray_s:.2f} |

Ratio (Ray / local, images/s): {ratio:.2f}x.

Command: `python benchmarks/spot_throughput.py --images {args.images} --side {args.side} --seed {args.seed}`.
"""
    write_section(args.results, body)
    print(body)


if __name__ == "__main__":
    main()
