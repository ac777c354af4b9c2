"""Scale: does memory stay flat from 2 000 to 20 000 images, through ingest and one augmentation epoch?

For each size N, in a fresh process with its own local Ray (2 CPUs):
1. ingest  - `pipelines.ingest.ingest` of N synthetic IC15-format images (JPEG + gt txt, `tcm.data.synth`) from a
             local folder into local Parquet shards + manifest (validation, quarantine, hashing: the real path);
2. epoch   - one augmentation epoch over those shards through `pipelines.augment.train_dataset` (Ray Data:
             decode, augment, crop, DB targets), consumed with `iter_torch_batches` as a trainer does, with the
             pipeline's default object-store budget (`data.object_store_budget_gib`).
Peak memory of each phase = the highest sum of PSS over the driver and every process below it (GCS, raylet
with the object store's shared memory, agents, Ray workers), sampled every 0.2 s by the sampler of
benchmarks/ingest_throughput.py. The N images are rendered once (2 processes) and cached in --workdir; the
2 000 set is the first 2 000 images of the 20 000 set (image k depends only on seed, split and k).

Run:  .venv/bin/python benchmarks/scale_ingest.py [--sizes 2000 20000] [--image 256] [--crop 128] [--batch 8]
Writes the `## Scale` section of benchmarks/RESULTS.md (other sections are left alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest_throughput import PIPELINE_BUDGET_GIB, PeakSampler, _pss_bytes, _tree, write_section  # noqa: E402
from tcm.data.formats import get_format  # noqa: E402
from tcm.data.synth import image_rng, layout_for, render_image, write_dataset  # noqa: E402

FORMAT = "icdar2015"
SEED = 0
SPLIT = "train"
WORKERS = 2  # Ray CPUs = augmentation tasks = synthesis processes: the 2-core CI machine
GIB = 2.0**30


# ---------------------------------------------------------------------------------------------- data


def _render_range(args: tuple[Path, int, int, int, int]) -> int:
    """Images k in [start, stop) exactly as `write_dataset` writes image k (same generator, naming, encoding),
    so that two processes can share the work of one `write_dataset(n)` call."""
    out, start, stop, height, width = args
    form, layout = get_format(FORMAT), layout_for(FORMAT)
    images, annotations = out / SPLIT / "images", out / SPLIT / "annotations"
    for k in range(start, stop):
        image, instances = render_image(image_rng(SEED, SPLIT, k), height, width, layout)
        name = form.image_name(layout.key_format.format(k=k), ".jpg")
        data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        (images / name).write_bytes(data)
        (annotations / form.annotation_name(name)).write_bytes(form.write(instances))
    return stop - start


def make_sources(workdir: Path, sizes: list[int], height: int, width: int) -> dict[int, Path]:
    """The largest set rendered once (reused when complete), the smaller ones as hard links to its first images."""
    largest = max(sizes)
    big = workdir / f"src-{largest}-{width}x{height}"
    done = big / "complete"
    if not done.exists():
        shutil.rmtree(big, ignore_errors=True)
        (big / SPLIT / "images").mkdir(parents=True)
        (big / SPLIT / "annotations").mkdir(parents=True)
        started = time.perf_counter()
        bounds = [1 + largest * i // WORKERS for i in range(WORKERS + 1)]
        with Pool(WORKERS) as pool:
            pool.map(_render_range, [(big, a, b, height, width) for a, b in zip(bounds, bounds[1:], strict=False)])
        done.write_text(f"{largest}\n")
        print(f"rendered {largest} images {width}x{height} in {time.perf_counter() - started:.0f} s -> {big}")
        # the shared renderer gives write_dataset's very images (checked on the first 3)
        check = workdir / "write_dataset-check"
        shutil.rmtree(check, ignore_errors=True)
        write_dataset(FORMAT, check, n=3, seed=SEED, split=SPLIT, height=height, width=width)
        for sub in ("images", "annotations"):
            for path in (check / SPLIT / sub).iterdir():
                if path.read_bytes() != (big / SPLIT / sub / path.name).read_bytes():
                    raise SystemExit(f"{path.name}: rendered differently from write_dataset")
        shutil.rmtree(check)
    form, layout = get_format(FORMAT), layout_for(FORMAT)
    out = {largest: big / SPLIT}
    for n in sorted(set(sizes) - {largest}):
        small = workdir / f"src-{n}-{width}x{height}"
        if not (small / "complete").exists():
            shutil.rmtree(small, ignore_errors=True)
            for sub in ("images", "annotations"):
                (small / SPLIT / sub).mkdir(parents=True)
            for k in range(1, n + 1):
                name = form.image_name(layout.key_format.format(k=k), ".jpg")
                os.link(big / SPLIT / "images" / name, small / SPLIT / "images" / name)
                ann = form.annotation_name(name)
                os.link(big / SPLIT / "annotations" / ann, small / SPLIT / "annotations" / ann)
            (small / "complete").write_text(f"{n}\n")
        out[n] = small / SPLIT
    return out


# ---------------------------------------------------------------------------------------------- one size


def _phase(fn) -> dict:
    """Run fn() under the PSS sampler: result, seconds, PSS before it starts, peak, peak in each tenth of it."""
    time.sleep(2.0)  # let the previous phase's processes settle
    idle = _pss_bytes(_tree(os.getpid()))
    progress = [0]
    sampler = PeakSampler(progress)
    sampler.start()
    started = time.perf_counter()
    try:
        result = fn(progress)
    finally:
        seconds = time.perf_counter() - started
        sampler.stop()
    used = [b for _, b in sampler.samples]
    tenths = [int(max(part)) for part in np.array_split(np.array(used), 10) if len(part)]
    return {
        "result": result,
        "seconds": seconds,
        "idle": idle,
        "peak": max(used),
        "peak_by_tenth": tenths,  # peak in each tenth of the phase's duration: a plateau, or still climbing?
        "samples": len(used),
    }


def child(src: Path, dst: Path, crop: int, batch: int) -> None:
    """A fresh process: ingest src -> dst, then one augmentation epoch over dst. JSON on the last line."""
    import ray

    from pipelines.augment import train_dataset
    from pipelines.ingest import ingest
    from tcm.config import DetectorConfig
    from tcm.data.transforms import AugmentConfig

    shutil.rmtree(dst, ignore_errors=True)
    ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    def run_ingest(_progress: list[int]) -> dict:
        manifest = ingest(FORMAT, str(src), str(dst), SPLIT, progress=lambda _msg: None)
        return {"rows": manifest["rows"], "shards": len(manifest["files"][SPLIT]),
                "quarantined": len(manifest["quarantined"])}  # fmt: skip

    model = DetectorConfig(input_size=crop)  # DB head, mmocr mean/std: only the codec and normalisation are used
    aug = AugmentConfig(crop_size=crop)

    def run_epoch(progress: list[int]) -> dict:
        ds = train_dataset(
            [(str(dst), 1.0)], SPLIT, model, aug, seed=SEED, batch_size=batch, num_workers=WORKERS,
            object_store_budget_gib=PIPELINE_BUDGET_GIB,  # the object-store budget `tcm train` streams with
        )
        for b in ds.iter_torch_batches(batch_size=batch):
            progress[0] += len(b["image"])
        return {"images": progress[0]}

    ingest_phase = _phase(run_ingest)
    epoch_phase = _phase(run_epoch)
    ray.shutdown()
    print(json.dumps({"ingest": ingest_phase, "epoch": epoch_phase}))


def measure(src: Path, dst: Path, crop: int, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(src), "--dst", str(dst), "--crop", str(crop), "--batch", str(batch)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"run on {src} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--image", type=int, default=256, help="synthetic image side (square)")
    parser.add_argument("--crop", type=int, default=128, help="training crop = model input")
    parser.add_argument("--batch", type=int, default=8, help="rows per augmentation call and per torch batch")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tcm-scale-bench")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dst", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dst, args.crop, args.batch)
        return

    import ray

    started = time.perf_counter()
    sources = make_sources(args.workdir, args.sizes, args.image, args.image)
    synth_s = time.perf_counter() - started
    runs = {}
    for n in sorted(args.sizes):
        runs[n] = measure(sources[n], args.workdir / f"shards-{n}", args.crop, args.batch)
        i, e = runs[n]["ingest"], runs[n]["epoch"]
        if i["result"]["rows"] != n or e["result"]["images"] != n:
            raise SystemExit(f"{n} images: ingested {i['result']['rows']}, epoch gave {e['result']['images']}")
        print(f"{n} images: ingest {i['seconds']:.0f} s peak {i['peak'] / GIB:.2f} GiB, "
              f"epoch {e['seconds']:.0f} s peak {e['peak'] / GIB:.2f} GiB")  # fmt: skip
    total_s = time.perf_counter() - started
    small, large = min(args.sizes), max(args.sizes)

    def growth(phase: str) -> float:
        return runs[large][phase]["peak"] / runs[small][phase]["peak"] - 1

    def tenths(phase: dict) -> str:
        return " / ".join(f"{b / GIB:.2f}" for b in phase["peak_by_tenth"])

    rows = [
        f"| {n:,} | {r['ingest']['result']['shards']} | {r['ingest']['seconds']:.0f}"
        f" | {n / r['ingest']['seconds']:.0f} | {r['ingest']['idle'] / GIB:.2f} | {r['ingest']['peak'] / GIB:.2f}"
        f" | {r['epoch']['seconds']:.0f} | {n / r['epoch']['seconds']:.0f} | {r['epoch']['idle'] / GIB:.2f}"
        f" | {r['epoch']['peak'] / GIB:.2f} |"
        for n, r in sorted(runs.items())
    ]
    lines = [
        "## Scale",
        "",
        f"`benchmarks/scale_ingest.py`: N synthetic IC15-format images ({args.image}x{args.image} JPEG q95 + gt txt,"
        " `tcm.data.synth`), for each N in a fresh process with its own local Ray (2 CPUs): (1) `pipelines.ingest."
        "ingest` from the local folder into local Parquet shards + manifest (validation, quarantine and hashing"
        f" included); (2) one augmentation epoch over those shards through `pipelines.augment.train_dataset` (crop"
        f" {args.crop}, DB targets, {args.batch} rows per augmentation call, {WORKERS} tasks, object-store budget"
        f" {PIPELINE_BUDGET_GIB:g} GiB = the pipeline's default) read with"
        f" `iter_torch_batches(batch_size={args.batch})`. Peak = highest sum of PSS over the driver and every process"
        " below it (GCS, raylet with the object store's shared memory, agents, Ray workers), sampled every 0.2 s"
        " (the sampler of `benchmarks/ingest_throughput.py`); idle = that sum just before the phase starts.",
        "",
        "| images | shards | ingest s | ingest img/s | ingest idle GiB | ingest peak GiB | epoch s | epoch img/s"
        " | epoch idle GiB | epoch peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Peak in each tenth of the phase's duration, GiB (does it plateau, or keep climbing with the data?):",
        "",
        "| images | phase | peak per tenth of the phase, GiB |",
        "|---|---|---|",
        *[f"| {n:,} | {p} | {tenths(r[p])} |" for n, r in sorted(runs.items()) for p in ("ingest", "epoch")],
        "",
        f"**Peak memory growth {small:,} -> {large:,} images ({large // small}x the data): ingest"
        f" {growth('ingest') * 100:+.1f} %, epoch {growth('epoch') * 100:+.1f} %** (target: flat).",
        "",
        f"Command: `python benchmarks/scale_ingest.py --sizes {' '.join(map(str, args.sizes))} --image {args.image}"
        f" --crop {args.crop} --batch {args.batch}`; whole run {total_s / 60:.0f} min including rendering the"
        f" {large:,} images once with {WORKERS} processes ({synth_s / 60:.0f} min; 0 when cached). Machine:"
        f" {os.cpu_count()} CPUs (nproc), shared with other jobs, load average {os.getloadavg()[0]:.1f} at the end"
        f" (absolute rates move with the load), {platform.machine()}, Python {platform.python_version()},"
        f" Ray {ray.__version__}.",
    ]
    text = "\n".join(lines)
    if not args.no_write:
        write_section(text, title="Scale")
    print(text)


if __name__ == "__main__":
    main()
