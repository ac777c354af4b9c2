"""Ingest throughput: the Ray Data augmentation pipeline against a plain torch DataLoader, and streaming memory.

1. Throughput. The same synthetic shards go through `pipelines.augment.train_dataset` (Ray Data, 2 CPUs, 2
   augmentation tasks, consumed with `iter_torch_batches` as a trainer does) and through a
   `torch.utils.data.DataLoader(num_workers=2)` whose workers run the very same `encode_batch` (decode -> augment
   -> jitter -> normalise -> codec targets) on the same Parquet shards. Images/s of each, alternating, several
   rounds in one process; the figure of record is the median of the per-round ratios Ray / DataLoader.
2. Memory. One epoch streamed through the Ray pipeline over 1 000 and over 5 000 images, each in a fresh
   process with its own local Ray. Peak memory = the highest sum of PSS (proportional set size, from
   /proc/<pid>/smaps_rollup, sampled every 0.2 s) over the driver and every process under it: GCS, raylet
   (which holds the object store's shared memory), dashboard agents and all Ray workers. PSS charges each shared
   page (the object store, shared libraries) once in total, so the sum is the memory the whole pipeline holds.

Run:  .venv/bin/python benchmarks/ingest_throughput.py [--small 1000] [--large 5000] [--rounds 3]
Writes the `## Ingest throughput` section of benchmarks/RESULTS.md (other sections are left alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import cv2
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.augment import ROW_COLUMNS, encode_batch, train_dataset  # noqa: E402
from pipelines.config import DataConfig  # noqa: E402
from pipelines.ingest import ROW_SCHEMA  # noqa: E402
from tcm.config import DetectorConfig  # noqa: E402
from tcm.data.synth import image_rng, render_image  # noqa: E402
from tcm.data.transforms import AugmentConfig  # noqa: E402

ROWS_PER_SHARD = 250  # 1 000 = the first 4 shards of the 5 000 set
IMAGE_H, IMAGE_W = 480, 640  # VGA: between the synthetic default (256) and IC15 (1280x720)
PIPELINE_BUDGET_GIB = DataConfig().object_store_budget_gib  # what `tcm train` streams with
BATCH = 4  # rows per encode_batch call, both pipelines (= MAP_BATCH_SIZE)
WORKERS = 2  # DataLoader workers = Ray augmentation tasks = Ray CPUs: the 2-core CI machine
SEED = 0


# ---------------------------------------------------------------------------------------------- data


def _shard(args: tuple[Path, int, int, int]) -> str:
    """Render rows [start, stop) as unified rows (JPEG q95) into one Parquet shard; returns its relative path."""
    out, index, start, stop = args
    rows = []
    for k in range(start, stop):
        image, instances = render_image(image_rng(SEED, "train", k), IMAGE_H, IMAGE_W)
        data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        rows.append(
            {
                "id": f"synth/train/{k}",
                "dataset": "synth",
                "split": "train",
                "image": data,
                "sha256": "",  # not read by the pipeline
                "width": IMAGE_W,
                "height": IMAGE_H,
                "polygons": [inst.points.reshape(-1).tolist() for inst in instances],  # (P, 2) -> x0, y0, ...
                "ignore": [inst.ignore for inst in instances],
                "texts": [inst.text for inst in instances],
            }
        )
    rel = f"train/part-{index:05d}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), out / rel)
    return rel


def _manifest(out: Path, files: list[str], rows: int) -> None:
    manifest = {"schema_version": 1, "rows": rows, "splits": {"train": rows}, "files": {"train": files}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def make_data(workdir: Path, small: int, large: int) -> tuple[Path, Path]:
    """`large` synthetic images as shards + manifest, and a `small` set made of its first shards (reused when
    already there)."""
    if small % ROWS_PER_SHARD or large % ROWS_PER_SHARD:
        raise SystemExit(f"--small and --large must be multiples of {ROWS_PER_SHARD}")
    big, little = workdir / f"synth-{large}", workdir / f"synth-{small}"
    if not (big / "manifest.json").exists():
        (big / "train").mkdir(parents=True, exist_ok=True)
        jobs = [(big, i, s, s + ROWS_PER_SHARD) for i, s in enumerate(range(0, large, ROWS_PER_SHARD))]
        started = time.perf_counter()
        with Pool(WORKERS) as pool:
            files = pool.map(_shard, jobs)
        _manifest(big, files, large)
        print(
            f"rendered {large} images {IMAGE_W}x{IMAGE_H} in {time.perf_counter() - started:.0f} s -> {big}"
        )
    if not (little / "manifest.json").exists():
        (little / "train").mkdir(parents=True, exist_ok=True)
        files = [f"train/part-{i:05d}.parquet" for i in range(small // ROWS_PER_SHARD)]
        for rel in files:
            (little / rel).write_bytes((big / rel).read_bytes())
        _manifest(little, files, small)
    return little, big


# ---------------------------------------------------------------------------------------------- pipelines


def ray_epoch(data: Path, model: DetectorConfig, aug: AugmentConfig) -> tuple[int, float, float]:
    """One epoch through Ray Data as a trainer reads it. Returns (images, seconds, seconds to the first batch)."""
    ds = train_dataset(
        [(str(data), 1.0)], "train", model, aug, seed=SEED, batch_size=BATCH, num_workers=WORKERS,
        object_store_budget_gib=PIPELINE_BUDGET_GIB,  # as the trainer streams it
    )
    started = time.perf_counter()
    first, n = None, 0
    for batch in ds.iter_torch_batches(batch_size=BATCH):
        first = first or time.perf_counter()
        n += len(batch["image"])
    return n, time.perf_counter() - started, (first or started) - started


def loader_epoch(data: Path, model: DetectorConfig, aug: AugmentConfig) -> tuple[int, float, float]:
    """One epoch through torch DataLoader(num_workers=2) running the same encode_batch on the same shards."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    from tcm.build import build_codec

    manifest = json.loads((data / "manifest.json").read_text())
    paths = [str(data / rel) for rel in manifest["files"]["train"]]
    codec = build_codec(model.head)

    class Shards(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            wid, nw = (info.id, info.num_workers) if info else (0, 1)
            for path in paths[wid::nw]:  # shards split between workers, as Ray splits them between tasks
                for rb in pq.ParquetFile(path).iter_batches(batch_size=BATCH, columns=ROW_COLUMNS):
                    out = encode_batch(
                        pa.Table.from_batches([rb]),
                        codec=codec,
                        model_cfg=model,
                        aug_cfg=aug,
                        seed=SEED,
                        epoch=0,
                    )
                    yield {k: torch.from_numpy(v) for k, v in out.items()}

    started = time.perf_counter()
    first, n = None, 0
    for batch in DataLoader(Shards(), batch_size=None, num_workers=WORKERS):
        first = first or time.perf_counter()
        n += len(batch["image"])
    return n, time.perf_counter() - started, (first or started) - started


def warm_up(data: Path, model: DetectorConfig, aug: AugmentConfig) -> float:
    """Import the pipeline in every Ray worker and run a 1 % epoch: the one-off start of a Ray session (a
    trainer pays it once per run, not per epoch). DataLoader workers are forked from this process, which has
    imported everything already, so they need no such step. Every timed epoch still includes its own start."""
    import ray

    @ray.remote(num_cpus=1)
    def load() -> None:
        import pipelines.augment  # noqa: F401

    started = time.perf_counter()
    ray.get([load.remote() for _ in range(WORKERS)])
    ds = train_dataset([(str(data), 1.0)], "train", model, aug, seed=SEED, fraction=0.01, num_workers=WORKERS)
    for _ in ds.iter_torch_batches(batch_size=BATCH):
        pass
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------- memory


def _tree(root: int) -> set[int]:
    """root and all its descendants (from /proc/<pid>/stat parent ids)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])  # field 4 (ppid), after "(comm)"
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [c for c, p in parent.items() if p == pid and c not in tree]
        tree.update(children)
        frontier.extend(children)
    return tree


def _pss_bytes(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue  # exited between listing and reading
        match = re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE)
        total += int(match.group(1)) * 1024 if match else 0
    return total


class PeakSampler(threading.Thread):
    """Samples the PSS sum of this process tree every `period` seconds, with the number of images consumed so
    far (`progress[0]`, updated by the consumer)."""

    def __init__(self, progress: list[int], period: float = 0.2):
        super().__init__(daemon=True)
        self.period, self.progress = period, progress
        self.samples: list[tuple[int, int]] = []  # (images consumed, bytes)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((self.progress[0], _pss_bytes(_tree(os.getpid()))))
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def memory_child(data: Path, crop: int, budget_gib: float | None) -> None:
    """Run in a fresh process: one epoch through Ray Data, print memory figures as JSON on the last line.

    `budget_gib`: the object store memory Ray Data may use for this pipeline (None = Ray's default, a share of
    the whole object store), through the pipeline's own `object_store_budget_gib` (what `tcm train` passes)."""
    import ray

    ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    model = DetectorConfig(input_size=crop)
    aug = AugmentConfig(crop_size=crop)
    time.sleep(2.0)  # let Ray's own processes settle
    idle = _pss_bytes(_tree(os.getpid()))
    progress = [0]
    sampler = PeakSampler(progress)
    sampler.start()
    ds = train_dataset(
        [(str(data), 1.0)], "train", model, aug, seed=SEED, batch_size=BATCH, num_workers=WORKERS,
        object_store_budget_gib=budget_gib,
    )
    started = time.perf_counter()
    for batch in ds.iter_torch_batches(batch_size=BATCH):
        progress[0] += len(batch["image"])
    seconds = time.perf_counter() - started
    sampler.stop()
    ray.shutdown()
    # peak by thousands of images consumed: flat streaming memory plateaus after the first blocks
    by_k = {}
    for n, used in sampler.samples:
        k = min(n, progress[0] - 1) // 1000  # the samples after the last batch belong to the last thousand
        by_k[k] = max(by_k.get(k, 0), used)
    result = {
        "images": progress[0],
        "seconds": seconds,
        "idle": idle,
        "peak": max(used for _, used in sampler.samples),
        "peak_by_thousand": [by_k[k] for k in sorted(by_k)],
        "samples": len(sampler.samples),
    }
    print(json.dumps(result))


def measure_memory(data: Path, crop: int, budget_gib: float | None) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", str(data), "--crop", str(crop)]
    if budget_gib is not None:
        cmd += ["--budget-gib", str(budget_gib)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"memory run on {data} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- report


def write_section(text: str, path: Path = ROOT / "benchmarks" / "RESULTS.md", title: str = "Ingest throughput") -> None:
    """Replace (or append) the `## <title>` section, leaving the others as they are."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    new = text.rstrip() + "\n\n"
    out = pattern.sub(lambda _: new, old) if pattern.search(old) else old.rstrip() + "\n\n" + new
    path.write_text(out.rstrip() + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=5000)
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating Ray / DataLoader epochs over --small"
    )
    parser.add_argument("--crop", type=int, default=640, help="training crop = model input (paper: 640)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tcm-ingest-bench")
    parser.add_argument(
        "--budget-gib",
        type=float,
        default=PIPELINE_BUDGET_GIB,
        help="object store budget for the second memory measurement (default: the pipeline's own default,"
        " data.object_store_budget_gib); the first uses Ray's default",
    )
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.crop, args.budget_gib if "--budget-gib" in sys.argv else None)
        return

    import ray

    small, large = make_data(args.workdir, args.small, args.large)
    model = DetectorConfig(input_size=args.crop)  # paper defaults: DB head, mmocr mean/std
    aug = AugmentConfig(crop_size=args.crop)

    ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    warm = warm_up(small, model, aug)
    print(
        f"Ray workers warmed in {warm:.1f} s (one-off per Ray session: importing ray.data and the pipeline)"
    )
    rounds = []
    for r in range(args.rounds):
        order = [("ray", ray_epoch), ("loader", loader_epoch)]
        results = {}
        for name, epoch in order if r % 2 == 0 else order[::-1]:
            n, seconds, first = epoch(small, model, aug)
            if n != args.small:
                raise SystemExit(f"{name} produced {n} images, expected {args.small}")
            results[name] = (n / seconds, n / max(seconds - first, 1e-9), first)
            print(
                f"round {r}: {name:6s} {n / seconds:6.1f} img/s ({seconds:.1f} s, first batch after {first:.1f} s)"
            )
        rounds.append(results)
    ray.shutdown()

    memory = {}  # (budget, images) -> figures
    for budget in (None, args.budget_gib):
        for data, n in ((small, args.small), (large, args.large)):
            memory[budget, n] = measure_memory(data, args.crop, budget)
            print(f"memory, budget {budget} GiB, {n} images: {memory[budget, n]}")

    ratios = [r["ray"][0] / r["loader"][0] for r in rounds]
    steady = [r["ray"][1] / r["loader"][1] for r in rounds]
    ratio, steady_ratio = statistics.median(ratios), statistics.median(steady)
    growth = {
        b: memory[b, args.large]["peak"] / memory[b, args.small]["peak"] - 1 for b in (None, args.budget_gib)
    }
    within = {
        b: memory[b, args.large]["peak_by_thousand"][-1] / memory[b, args.large]["peak_by_thousand"][0] - 1
        for b in (None, args.budget_gib)
    }
    gib = 2.0**30
    per_image = args.crop * args.crop * 4 * (3 + 6)  # float32 image + the 6 DB maps

    def budget_name(b: float | None) -> str:
        return "Ray default" if b is None else f"{b:g} GiB"

    lines = [
        "## Ingest throughput",
        "",
        f"`benchmarks/ingest_throughput.py`: synthetic {IMAGE_W}x{IMAGE_H} JPEG scene-text images in Parquet shards"
        f" ({ROWS_PER_SHARD} rows each) -> decode, flip/rotate/scale, DB crop {args.crop}, colour jitter,"
        f" normalise, DB targets (`DBCodec.encode`), {BATCH} rows per call. Ray Data: `train_dataset` on a local"
        f" Ray with {WORKERS} CPUs and {WORKERS} augmentation tasks, read with `iter_torch_batches`. Baseline:"
        f" `torch.utils.data.DataLoader(num_workers={WORKERS})` whose workers run the same `encode_batch` on the"
        " same shards. Alternating epochs over the small set in one process; the figure of record is the"
        " median of the per-round ratios. Every epoch includes its own start (Ray: planning, tasks, first"
        " batch; DataLoader: forking its workers); the one-off start of the Ray session (workers importing"
        f" ray.data and the pipeline, {warm:.0f} s in this run) is paid once before timing, as a trainer pays it"
        " once per run.",
        "",
        "| round | Ray Data img/s | DataLoader img/s | ratio | ratio after the first batch |",
        "|---|---|---|---|---|",
        *[
            f"| {i} | {r['ray'][0]:.1f} | {r['loader'][0]:.1f} | {r['ray'][0] / r['loader'][0]:.2f}"
            f" | {r['ray'][1] / r['loader'][1]:.2f} |"
            for i, r in enumerate(rounds)
        ],
        "",
        f"**Ratio Ray Data / DataLoader: {ratio:.2f}** (target >= 0.9; {steady_ratio:.2f} counting from the first"
        f" batch, i.e. without start-up). First batch after {statistics.median(r['ray'][2] for r in rounds):.1f} s"
        f" (Ray) / {statistics.median(r['loader'][2] for r in rounds):.1f} s (DataLoader).",
        "",
        "Memory: one epoch streamed through Ray Data in a fresh process per run. Peak = highest sum of PSS"
        " (/proc/<pid>/smaps_rollup, sampled every 0.2 s) over the driver and every process below it (GCS, raylet,"
        " agents, workers, including the object store's shared memory as mapped by them); PSS counts each shared"
        f" page once. Runs with Ray Data's default object-store budget and with a {args.budget_gib:g} GiB budget"
        " (`train_dataset(object_store_budget_gib=...)`; the pipeline's default is"
        f" `data.object_store_budget_gib = {PIPELINE_BUDGET_GIB}`, which `tcm train` also hands to Ray Train through"
        " `ray.train.DataConfig(execution_options=...)`).",
        "",
        "| object-store budget | images | epoch s | idle GiB | peak GiB | peak per 1 000 images consumed, GiB |"
        " tensors streamed GiB |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {budget_name(b)} | {m['images']} | {m['seconds']:.0f} | {m['idle'] / gib:.2f} | {m['peak'] / gib:.2f}"
            f" | {' / '.join(f'{v / gib:.2f}' for v in m['peak_by_thousand'])} | {m['images'] * per_image / gib:.0f} |"
            for (b, _), m in memory.items()
        ],
        "",
        f"**Peak memory growth {args.small} -> {args.large} images: {growth[args.budget_gib] * 100:+.1f} % with the"
        f" {args.budget_gib:g} GiB budget** (the pipeline's default: the figure of record; target <= 20 %),"
        f" {growth[None] * 100:+.1f} % with Ray's default budget."
        f" Within the {args.large}-image epoch, peak over the last 1 000 images vs the first 1 000:"
        f" {within[None] * 100:+.1f} % (default), {within[args.budget_gib] * 100:+.1f} % ({args.budget_gib:g} GiB).",
        "",
        f"Command: `python benchmarks/ingest_throughput.py --small {args.small} --large {args.large}"
        f" --rounds {args.rounds} --crop {args.crop}`. Machine: {os.cpu_count()} CPUs (nproc), load average"
        f" {os.getloadavg()[0]:.1f} at the end (shared with other jobs: absolute rates move with the load),"
        f" {platform.machine()}, Python {platform.python_version()}, Ray {ray.__version__}.",
    ]
    write_section("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
