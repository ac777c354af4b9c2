"""`tcm spot` throughput, two ratios on the same synthetic images in one run:

1. the Ray Data pipeline (detector actor pool -> crop tasks -> recogniser actor pool, streaming; one run per
   `--det-actors` pool size: the tiny detector is the heavier stage, and one torch process scales poorly past one
   thread, so copies of it are how a pipeline uses more cores) against
   `spot_images_local` (the same two models, crops, NMS and recogniser, one image after the other in one process);
2. `--runtime onnxruntime` (the two `tcm export` folders on ONNX Runtime, no torch) against the PyTorch runtime,
   both as the local loop and on Ray.

Outputs are asserted first: Ray identical to the local loop, ONNX Runtime the same spots as PyTorch (integer
corners and texts identical, scores within 1e-3: `pipelines.spot_onnx.record_differences`).

Fairness on a small shared host: every path gets the whole machine (the local loops `--threads` = all cores for
torch and ONNX Runtime alike; Ray one actor of each, one thread each, as `tcm spot` runs them); Ray is started
before any clock and every path runs once on the warm-up images, untimed (imports, one-off initialisation).
Warm-up is then excluded by difference: each path runs on the first `--warmup` images and on all
`--images`, and its steady rate is (images - warmup) / (T_all - T_warmup): model loading, actor start, first
forwards and allocations cancel (Ray streams results in bursts, so per-result timestamps would not). The cold
rate (images / T_all) is listed beside it. The paths alternate within each of `--rounds` rounds; the ratios of
record are medians over rounds. Load average is read at the start and end.

Models: the tiny detector and tiny recogniser presets with random weights (no weights are downloaded); random
weights find about one region per image, so the figure weighs detection more than a trained pair would.

    .venv/bin/python benchmarks/spot_throughput.py --images 40 --side 256 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
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


def make_models(root: Path) -> dict[str, str]:
    """Seeded tiny checkpoints and their `tcm export` folders: {"torch": (det, rec), "onnxruntime": (det, rec)}."""
    import torch

    from pipelines.checkpoint import save_checkpoint
    from pipelines.export import detector_paths, detector_sidecar
    from tcm.build import build_detector
    from tcm.config import DetectorConfig
    from tcm.export import export_onnx
    from tcm.recognition.build import build_recognizer
    from tcm.recognition.config import RecognizerConfig
    from tcm.recognition.export import export_recognizer

    torch.manual_seed(0)
    det_cfg, rec_cfg = DetectorConfig.tiny(), RecognizerConfig.tiny()
    det, rec = build_detector(det_cfg, pretrained=False).eval(), build_recognizer(rec_cfg, pretrained=False).eval()
    save_checkpoint(root / "det", det, det_cfg)
    save_checkpoint(root / "rec", rec, rec_cfg)
    graph, sidecar = detector_paths(root / "det_onnx")  # as `tcm export` writes them
    graph.parent.mkdir()
    names = export_onnx(det, graph, det_cfg.input_size, det_cfg.input_size)
    sidecar.write_text(json.dumps(detector_sidecar(det_cfg, None, names)))
    export_recognizer(rec, root / "rec_onnx")
    return {"torch": (str(root / "det"), str(root / "rec")), "onnxruntime": (str(root / "det_onnx"), str(root / "rec_onnx"))}


def clocked(run: Callable[[str], list], total: int, warmup: int) -> tuple[list, float, float]:
    """`run("warm")` then `run("all")`: (all results, cold images/s = total / T_all, steady images/s =
    (total - warmup) / (T_all - T_warm))."""
    t0 = time.perf_counter()
    run("warm")
    t1 = time.perf_counter()
    results = run("all")
    t2 = time.perf_counter()
    return results, total / (t2 - t1), (total - warmup) / ((t2 - t1) - (t1 - t0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=40, help="synthetic images (IC15 layout)")
    ap.add_argument("--side", type=int, default=256, help="image width and height, and the detector's test size")
    ap.add_argument("--warmup", type=int, default=8, help="images of the warm-up run subtracted (2 Ray batches)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of every path; the median ratio")
    ap.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}),
                    help="torch / ONNX Runtime thread counts of the local loops (each measured; the best is the baseline)")
    ap.add_argument("--det-actors", type=int, nargs="+", default=[1, 2],
                    help="detector actor pool sizes to run `tcm spot` with (one recogniser actor each time)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"), help="markdown file to update")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import ray
    import torch

    from pipelines.spot import SpotSettings, spot_images, spot_images_local
    from pipelines.spot_onnx import record_differences
    from tcm.data.synth import write_dataset

    load_start = os.getloadavg()
    rates: dict[str, list[tuple[float, float]]] = {}
    loads: list[float] = []  # load average (1 min) at each round's start
    with tempfile.TemporaryDirectory(prefix="tcm-spot-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        models = make_models(root)
        export_s = time.perf_counter() - t0
        write_dataset("icdar2015", root / "data", args.images, seed=args.seed, split="test", height=args.side, width=args.side)
        folders = {"all": root / "data" / "test" / "images", "warm": root / "warm"}
        folders["warm"].mkdir()
        for path in sorted(folders["all"].iterdir())[: args.warmup]:
            shutil.copy(path, folders["warm"] / path.name)  # the first images of the run
        outputs: dict[str, list] = {}

        def local(rt: str, threads: int) -> Callable[[str], list]:
            settings = SpotSettings(long_side=args.side, short_side=args.side, runtime=rt, onnx_threads=threads,
                                    rec_early_stop=False)  # fmt: skip

            def run(which: str) -> list:
                torch.set_num_threads(threads)  # the torch runtime's; ONNX Runtime's are in the settings
                return spot_images_local(*models[rt], sorted(folders[which].iterdir()), settings)

            return run

        def piped(rt: str, det_actors: int) -> Callable[[str], list]:
            # the actors share the cores left by the crop tasks (0.25 CPU), at most tcm spot's 0.75 each; each runs
            # one thread (Ray's OMP_NUM_THREADS for a fractional actor)
            cpus = min(0.75, ((os.cpu_count() or 1) - 0.25) / (det_actors + 1))
            settings = SpotSettings(long_side=args.side, short_side=args.side, runtime=rt, det_actors=det_actors,
                                    actor_cpus=round(cpus, 2), rec_early_stop=False)  # fmt: skip
            return lambda which: spot_images(*models[rt], str(folders[which]), settings)

        paths: dict[str, Callable[[str], list]] = {}
        for rt in ("torch", "onnxruntime"):
            paths |= {f"local {rt}, {t} thr": local(rt, t) for t in args.threads}
            paths |= {f"Ray {rt}, {n} det": piped(rt, n) for n in args.det_actors}
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            for run in paths.values():  # once, untimed: imports and one-off initialisation of each path
                run("warm")
            for r in range(args.rounds):
                loads.append(os.getloadavg()[0])
                for name, run in paths.items():
                    results, cold, steady = clocked(run, args.images, args.warmup)
                    rates.setdefault(name, []).append((cold, steady))
                    outputs.setdefault(name, [x.record() for x in results])
                    print(f"round {r} {name:26s} cold {cold:6.2f} img/s  steady {steady:6.2f} img/s", flush=True)
        finally:
            ray.shutdown()

    t1 = args.threads[0]
    for rt in ("torch", "onnxruntime"):  # Ray's actors and the first local loop: identical records
        for n in args.det_actors:
            assert outputs[f"Ray {rt}, {n} det"] == outputs[f"local {rt}, {t1} thr"], f"{rt}, {n} det: Ray and the local loop disagree"
    reference = outputs[f"local torch, {t1} thr"]
    for name, records in outputs.items():  # other thread counts and ONNX Runtime: the same spots
        diffs = record_differences(records, reference)
        assert not diffs, f"{name} and PyTorch ({t1} thread) spots differ: {diffs[:5]}"
    words = sum(len(r["spots"]) for r in reference)
    load_end = os.getloadavg()
    print(json.dumps({"rates": rates, "loads": loads, "load_end": load_end}), flush=True)  # the raw figures

    def best(prefix: str, suffixes: list[str]) -> None:  # per round, the fastest of the path's settings
        rates[f"{prefix}, best"] = [
            tuple(max(rates[f"{prefix}, {x}"][r][k] for x in suffixes) for k in (0, 1)) for r in range(args.rounds)
        ]

    for rt in ("torch", "onnxruntime"):
        best(f"local {rt}", [f"{t} thr" for t in args.threads])
        best(f"Ray {rt}", [f"{n} det" for n in args.det_actors])

    def ratio(a: str, b: str, k: int) -> float:
        return statistics.median(x[k] / y[k] for x, y in zip(rates[a], rates[b], strict=True))

    rows = "\n".join(
        f"| {name} | {statistics.median(c for c, _ in v):.2f} | {statistics.median(s for _, s in v):.2f} | "
        + ", ".join(f"{s:.2f}" for _, s in v) + " |"
        for name, v in rates.items()
    )
    intro = (
        f"`benchmarks/spot_throughput.py`: tiny detector + tiny recogniser (random weights, seeded), {args.images}"
        f" synthetic {args.side}x{args.side} images ({words} words read), {args.rounds} alternating rounds. Local loop"
        f" = `spot_images_local` (one process, at {' and '.join(map(str, args.threads))} torch / ONNX Runtime threads;"
        " \"best\" = the faster per round, the baseline of record); Ray = `tcm spot`'s"
        f" pipeline ({' or '.join(map(str, args.det_actors))} detector actor(s), crop tasks (0.25 CPU), 1 recogniser"
        " actor, one thread each, the actors sharing the rest of the cores at most 0.75 CPU each; \"best\" = the"
        f" faster per round; Ray started before the clock, the actors' start inside it). Steady = ({args.images} - {args.warmup}) / (T({args.images} images) -"
        f" T(first {args.warmup})): model load, actor start and first forwards cancel (every path ran once untimed"
        f" before); cold = {args.images} / T({args.images} images). ONNX Runtime = the two `tcm export` folders"
        f" (`--runtime onnxruntime`, no torch in the process; export {export_s:.0f} s, not timed); PyTorch runs all"
        " decoding steps as the graphs do (`--fixed-steps`: with the default early stop one word in 120 read"
        " otherwise in an earlier run, docs/onnx_spot.md; with random weights words seldom end early, so the work"
        " is about the same). Outputs asserted"
        " first: Ray identical to the local loop for each runtime, ONNX Runtime the same spots as PyTorch (integer"
        f" corners and texts identical, scores within 1e-3). Host: {os.cpu_count()} CPUs, {platform.machine()},"
        f" shared with other work: load average (1 min) {load_start[0]:.1f} at the start,"
        f" {' / '.join(f'{x:.1f}' for x in loads)} as each round began, {load_end[0]:.1f} at the end."
    )
    same_threads = ", ".join(
        f"{ratio(f'local onnxruntime, {t} thr', f'local torch, {t} thr', 1):.2f}x at {t} thread(s)" for t in args.threads
    )
    ratios = (
        "Ratios of record (median over rounds of the per-round ratio, steady rates): **Ray / local loop"
        f" {ratio('Ray torch, best', 'local torch, best', 1):.2f}x** (PyTorch, best against best; with"
        f" {args.det_actors[0]} detector actor(s) {ratio(f'Ray torch, {args.det_actors[0]} det', 'local torch, best', 1):.2f}x;"
        f" {ratio('Ray onnxruntime, best', 'local onnxruntime, best', 1):.2f}x with ONNX Runtime); **ONNX Runtime / PyTorch"
        f" {ratio('local onnxruntime, best', 'local torch, best', 1):.2f}x** for the whole spot in the local loop, best"
        f" against best ({same_threads}; {ratio('Ray onnxruntime, best', 'Ray torch, best', 1):.2f}x on Ray). Cold (model"
        f" load / actor start included): Ray / local {ratio('Ray torch, best', 'local torch, best', 0):.2f}x, ONNX Runtime /"
        f" PyTorch {ratio('local onnxruntime, best', 'local torch, best', 0):.2f}x."
    )
    command = (
        f"Command: `python benchmarks/spot_throughput.py --images {args.images} --side {args.side} --rounds"
        f" {args.rounds} --warmup {args.warmup} --threads {' '.join(map(str, args.threads))} --det-actors"
        f" {' '.join(map(str, args.det_actors))} --seed {args.seed}`."
    )
    table = "| path | cold images/s | steady images/s | steady per round |\n|---|---|---|---|\n" + rows
    body = "\n\n".join([intro, table, ratios, command]) + "\n"
    if not args.no_write:
        write_section(args.results, body)
    print(body)


if __name__ == "__main__":
    main()
