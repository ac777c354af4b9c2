"""Ray Data pipeline: ingested Parquet shards -> augmented, normalised images with their head targets.

    manifest.json ──▶ listed shards only ──read_parquet──▶ few-shot subset (fraction) ──▶ copies / subsample
    per source (mixing weights) ──▶ decode → augment → jitter → normalise → codec.encode ──mix──▶
    {"image": (B, 3, S, S) float32, <codec keys>: (B, ...) float32}

Per source, everything up to codec.encode runs in one fused Ray task per shard (read included), so the object
store only ever holds augmented batches, within the stream's budget (`with_budget`).

The per-batch work is the plain function `encode_batch` (and `augment_row` / `encode_sample` below it), so a
torch DataLoader or a benchmark runs exactly the code Ray Data runs. The codec is built on the driver
(`tcm.build.build_codec`) and shipped to the workers as an object: a worker then imports only the numpy codec,
not the torch model library behind `tcm.build` (seconds and hundreds of MB per worker process).

Reproducibility. Every random draw of a row comes from `row_rng(seed, epoch, repeat, row id)`: nothing depends
on which worker handles the row or in which order. A Dataset is a plan that re-executes on every pass; pass k
over the Dataset (the k-th epoch of a training loop, counted by Ray Data itself, as its own seeded `random()`
expression and file shuffles do) draws the augmentation of epoch `epoch + k`, so one Dataset handed to a trainer
gives fresh augmentation every epoch and a resumed run passes `epoch=<first epoch>` to continue the same stream:
`train_dataset` starts the Dataset's pass counter at `epoch`, so the seeded file order (Ray hashes (seed, pass))
continues too. Only a completed pass counts: a loop that stops iterating early gets the same augmentation again
next time. `deterministic=True` adds Ray Data's `preserve_order`: blocks then leave in the same order on every run
(and reach the same trainer worker), so a run replays exactly, at the cost of waiting for the slowest task.

Mixing. Each source contributes weight_i / sum(weights) of an epoch of N = sum of the sources' (few-shot) row
counts: a source whose share exceeds its size is repeated (copy k is another augmentation of the same image,
`repeat` = k), a source whose share is smaller is sub-sampled by a per-epoch hash of the row id (a different
subset each epoch, deterministic). Ray's `Dataset.mix` (present in the pinned Ray) then interleaves the sources
by the same weights, so every part of the epoch has the mixture, not source after source. Copies of a row
leave the same read block one after the other: shuffle locally in the trainer
(`iter_torch_batches(local_shuffle_buffer_size=...)`) so a batch does not hold one image several times.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray.data

from pipelines import storage
from pipelines.ingest import read_manifest
from tcm.config import DetectorConfig
from tcm.data.transforms import (
    AugmentConfig,
    Polygons,
    colour_jitter,
    decode_image,
    normalize,
    random_augment,
    resize_for_test,
)

ROW_COLUMNS = ["id", "image", "polygons", "ignore"]  # all the pipeline reads of a unified row
MAP_BATCH_SIZE = 4  # rows per encode_batch call: a row is ~14 MB of float32 at 640 (image + DB maps)
NUM_WORKERS = 2  # concurrent augmentation tasks: the 2-core CI machine; raise on a cluster
# largest block an augmentation task stores (Ray's default 128): a fused task encodes a whole shard, and with
# 128 MiB blocks each task and the trainer's prefetch held ~128 MB more (2 000 vs 20 000 images at 128 px, one
# epoch: peak 2.85 / 2.95 GiB with 128, 2.21 / 2.30 with 16; benchmarks/scale_ingest.py)
TRAIN_BLOCK_MIB = 16


@dataclass(frozen=True)
class Shards:
    """The Parquet files a manifest lists for one split, on their filesystem."""

    fs: pafs.FileSystem
    paths: list[str]
    manifest_uri: str


def manifest_shards(manifest_uri: str, split: str) -> Shards:
    """Only the files manifest.json lists (never a glob: a half-written or stray file is not data)."""
    manifest = read_manifest(manifest_uri)
    files = manifest.get("files", {})
    root = storage.resolve(manifest_uri)  # root.uri: the URI without any `user:secret@` part, for messages
    if split not in files:
        raise ValueError(f"{root.uri}/manifest.json: no split {split!r} under 'files' (have {sorted(files)})")
    if not files[split]:
        raise ValueError(f"{root.uri}/manifest.json: split {split!r} lists no shards (0 rows ingested?)")
    return Shards(root.fs, [root.join(rel).path for rel in files[split]], manifest_uri)


# ---------------------------------------------------------------------------------------------------------------
# deterministic hashing of row ids


def id_unit(ids: Sequence[str], salt: str = "") -> np.ndarray:
    """(N,) float64 in [0, 1): a uniform number per id, stable across processes, machines and runs."""
    out = np.empty(len(ids), dtype=np.float64)
    for i, row_id in enumerate(ids):
        digest = hashlib.sha256(f"{salt}|{row_id}".encode()).digest()
        out[i] = int.from_bytes(digest[:8], "little") / 2.0**64
    return out


def in_fraction(ids: Sequence[str], fraction: float) -> np.ndarray:
    """(N,) bool: the few-shot subset. Depends on the id only, so the 10 % subset is the same every run and
    nested in the 20 % one."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data fraction must be in (0, 1], got {fraction}")
    return id_unit(ids, "fraction") < fraction


def row_rng(seed: int, epoch: int, repeat: int, row_id: str) -> np.random.Generator:
    """The generator of one row's augmentation in one epoch (copy `repeat` of it when a source is repeated)."""
    words = np.frombuffer(hashlib.sha256(row_id.encode()).digest()[:16], dtype=np.uint32)  # (4,)
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, repeat, *words.tolist()]))


def _pass_index() -> int:
    """How many times this Dataset has been executed before (0 outside Ray Data).

    Ray Data copies the DataContext into each Dataset, counts successful executions in it and ships it to every
    task; its seeded `random()` expression and FileShuffleConfig(reseed_after_execution) read the same counter.
    """
    context = ray.data.DataContext.get_current()
    return int(getattr(context, "_execution_idx", 0))


# ---------------------------------------------------------------------------------------------------------------
# per-row and per-batch functions (plain: Ray Data, a torch DataLoader and the benchmark all call these)


def _columns(batch: pa.Table | Mapping[str, Any]) -> dict[str, list]:
    if isinstance(batch, pa.Table):
        return {name: batch.column(name).to_pylist() for name in batch.column_names}
    return {name: list(values) for name, values in batch.items()}


def _polygons(flat: Sequence[Sequence[float]] | None) -> Polygons:
    """Unified-row polygons (x0, y0, x1, y1, ...) -> N arrays (P, 2)."""
    return [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in (flat or [])]


def augment_row(
    row: Mapping[str, Any], *, aug_cfg: AugmentConfig, seed: int, epoch: int
) -> tuple[np.ndarray, Polygons, list[bool]]:
    """Decode and augment one unified row -> ((S, S, 3) uint8 BGR, polygons (P, 2) in it, ignore flags)."""
    row_id = str(row["id"])
    try:
        image = decode_image(row["image"])
    except ValueError as err:
        raise ValueError(f"row {row_id!r}: {err}") from None
    rng = row_rng(seed, epoch, int(row.get("repeat") or 0), row_id)
    image, polygons, ignore = random_augment(
        image, _polygons(row["polygons"]), list(row["ignore"] or []), rng, aug_cfg
    )
    return colour_jitter(image, rng, aug_cfg), polygons, ignore


def encode_sample(
    image: np.ndarray, polygons: Polygons, ignore: list[bool], codec: Any, model_cfg: DetectorConfig
) -> dict[str, np.ndarray]:
    """(H, W, 3) uint8 BGR + polygons -> {"image": (3, H, W) float32, <codec target>: ...}."""
    H, W = image.shape[:2]
    out = {"image": normalize(image, model_cfg.pixel_mean, model_cfg.pixel_std)}
    out.update(codec.encode(polygons, ignore, H, W))
    return out


def check_sizes(model_cfg: DetectorConfig, aug_cfg: AugmentConfig) -> None:
    if aug_cfg.crop_size != model_cfg.input_size:
        raise ValueError(
            f"augmentation crop_size={aug_cfg.crop_size} but model input_size={model_cfg.input_size}: "
            "the training crop is the model's input size; set both to the same value"
        )


def encode_batch(
    batch: pa.Table | Mapping[str, Any],
    *,
    codec: Any,
    model_cfg: DetectorConfig,
    aug_cfg: AugmentConfig,
    seed: int,
    epoch: int,
) -> dict[str, np.ndarray]:
    """Unified rows (id, image, polygons, ignore[, repeat]) -> {"image": (B, 3, S, S) float32, targets (B, ...)}.

    `codec` = `tcm.build.build_codec(model_cfg.head)`."""
    cols = _columns(batch)
    B = len(cols["id"])
    samples = []
    for i in range(B):
        row = {name: values[i] for name, values in cols.items()}
        image, polygons, ignore = augment_row(row, aug_cfg=aug_cfg, seed=seed, epoch=epoch)
        samples.append(encode_sample(image, polygons, ignore, codec, model_cfg))
    if not samples:
        return {}
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}  # each (B, ...)


def _encode_block_ray(block: pa.Table, *, batch_size: int, **kwargs: Any) -> Iterator[dict[str, np.ndarray]]:
    """`encode_batch` over a whole read block, `batch_size` rows per call, each result yielded as soon as it is
    made; the epoch advanced by the Dataset's pass count (see the module docstring). Batching here rather than
    through map_batches(batch_size=...) lets Ray Data fuse the augmentation into the read task (train_dataset)."""
    kwargs["epoch"] += _pass_index()
    for start in range(0, block.num_rows, batch_size):
        yield encode_batch(block.slice(start, batch_size), **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# evaluation rows


def eval_row(
    row: Mapping[str, Any], *, model_cfg: DetectorConfig, long_side: int, short_side: int, max_side: int | None = None
) -> dict[str, Any]:
    """One unified row -> the network input at its own test size: keep-ratio resize, zero-padded bottom/right
    only to multiples of 32 (the released test pipeline, `Pad(size_divisor=32)`, batch 1). TCM's global parts
    see every padded pixel, so a shared larger canvas would change the image's predictions. `max_side` caps the
    longer resized side (memory). `scale` (sx, sy) maps back to original pixels (the `scale` of Codec.decode);
    the ground truth goes as JSON (original pixels)."""
    row_id = str(row["id"])
    try:
        image = decode_image(row["image"])
    except ValueError as err:
        raise ValueError(f"row {row_id!r}: {err}") from None
    H, W = image.shape[:2]
    padded, scale = resize_for_test(image, long_side, short_side, max_side=max_side)  # (H', W', 3), /32
    return {
        "image": normalize(padded, model_cfg.pixel_mean, model_cfg.pixel_std),  # (3, H', W')
        "id": row_id,
        "scale": np.asarray(scale, dtype=np.float64),  # (2,)
        "width": W,
        "height": H,
        "gt_polygons": json.dumps([list(map(float, p)) for p in (row["polygons"] or [])]),
        "gt_ignore": json.dumps([bool(v) for v in (row["ignore"] or [])]),
    }


def ragged(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """A batch column of arrays whose shapes may differ: (B,) object array (Ray Data stores it as a
    variable-shaped tensor column; `np.stack` would fail on images of different test sizes)."""
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


def encode_eval_batch(
    batch: pa.Table | Mapping[str, Any],
    *,
    model_cfg: DetectorConfig,
    long_side: int,
    short_side: int,
    max_side: int | None = None,
) -> dict[str, np.ndarray]:
    cols = _columns(batch)
    rows = [
        eval_row(
            {k: v[i] for k, v in cols.items()},
            model_cfg=model_cfg,
            long_side=long_side,
            short_side=short_side,
            max_side=max_side,
        )
        for i in range(len(cols["id"]))
    ]
    if not rows:
        return {}
    return {
        "image": ragged([r["image"] for r in rows]),  # (B,) of (3, H_i, W_i): each image at its own size
        "scale": np.stack([r["scale"] for r in rows]),  # (B, 2)
        "width": np.array([r["width"] for r in rows], dtype=np.int64),
        "height": np.array([r["height"] for r in rows], dtype=np.int64),
        **{key: np.array([r[key] for r in rows], dtype=object) for key in ("id", "gt_polygons", "gt_ignore")},
    }


def parse_gt(gt_polygons: str, gt_ignore: str) -> tuple[Polygons, list[bool]]:
    """The JSON ground truth of an eval row -> N arrays (P, 2) in original pixels and N ignore flags."""
    return _polygons(json.loads(gt_polygons)), [bool(v) for v in json.loads(gt_ignore)]


# ---------------------------------------------------------------------------------------------------------------
# row selection: few-shot subset, repeats / sub-sampling for the mixing weights


def _select(table: pa.Table, *, fraction: float, keeps: Sequence[float], seed: int, epoch: int) -> pa.Table:
    """The few-shot subset, once per copy of the source: copy k keeps a `keeps[k]` share of it, chosen by a hash
    of (seed, epoch + pass, k, id). Adds the `repeat` column (= k)."""
    ids = table.column("id").to_pylist()
    subset = in_fraction(ids, fraction)
    parts = []
    for k, keep in enumerate(keeps):
        mask = (
            subset
            if keep >= 1.0
            else subset & (id_unit(ids, f"mix/{seed}/{epoch + _pass_index()}/{k}") < keep)
        )
        part = table.filter(pa.array(mask))
        parts.append(part.append_column("repeat", pa.array(np.full(part.num_rows, k, dtype=np.int32))))
    return pa.concat_tables(parts)


@contextlib.contextmanager
def _parquet_reader_v1() -> Iterator[None]:
    """Plan the read with Ray Data's V1 Parquet reader.

    The default V2 reader starts FooterReader actors to list and index files on every execution: 4-10 s per
    pass on the 2-core CI machine against 0.2-1 s for V1 (measured), i.e. per epoch, per validation and per test.
    The manifest already names every shard, so footer-based listing buys nothing here. The choice is made when
    the read is planned; the flag is restored right after."""
    ctx = ray.data.DataContext.get_current()
    before = getattr(ctx, "use_datasource_v2", None)
    if before is not None:
        ctx.use_datasource_v2 = False
    try:
        yield
    finally:
        if before is not None:
            ctx.use_datasource_v2 = before


def num_rows(shards: Shards) -> int:
    """Rows in the listed shards, from their Parquet footers (no data read)."""
    return sum(pq.read_metadata(path, filesystem=shards.fs).num_rows for path in shards.paths)


def count_rows(shards: Shards, fraction: float) -> int:
    """Rows of the few-shot subset of a split (reads only the id column)."""
    ids = pq.read_table(shards.paths, columns=["id"], filesystem=shards.fs).column("id").to_pylist()
    return int(in_fraction(ids, fraction).sum())


def mixing_plan(counts: Sequence[int], weights: Sequence[float]) -> list[list[float]]:
    """Per source, the keep share of each copy so that source i gives weight_i / sum(w) of N = sum(counts) rows:
    [1, 1, 0.4] = two full copies and 40 % of a third."""
    if len(counts) != len(weights) or not counts:
        raise ValueError(f"mixing: {len(counts)} sources but {len(weights)} weights")
    if any(w <= 0 for w in weights) or any(n <= 0 for n in counts):
        raise ValueError(
            f"mixing: weights must be > 0 and sources non-empty (weights {weights}, rows {counts})"
        )
    total, wsum = sum(counts), sum(weights)
    plan = []
    for n, w in zip(counts, weights, strict=True):
        ratio = total * w / wsum / n  # copies of this source per epoch
        plan.append([min(1.0, ratio - k) for k in range(math.ceil(ratio - 1e-9))])
    return plan


def select_rows(
    sources: Sequence[tuple[str, float]],
    split: str,
    *,
    seed: int,
    fraction: float = 1.0,
    epoch: int = 0,
    num_workers: int = NUM_WORKERS,
    cpus_per_task: float = 1.0,
    columns: Sequence[str] = ROW_COLUMNS,
    shuffle_files: bool = True,
    per_source: Callable[[ray.data.Dataset], ray.data.Dataset] | None = None,
) -> ray.data.Dataset:
    """The rows of one epoch: `columns` + `repeat`, sources mixed by their weights.
    `shuffle_files`: read the shards in a new (seeded) order on every pass. `per_source`: a map applied to each
    source's rows before mixing, inside its read tasks: one task per shard, `num_workers` at a time (without it,
    Ray splits the read as it sees fit)."""
    if not sources:
        raise ValueError("train data: no sources given")
    shards = [manifest_shards(uri, split) for uri, _ in sources]
    weights = [float(w) for _, w in sources]
    if len(sources) == 1:
        plan = [[1.0]]
    else:
        plan = mixing_plan([count_rows(s, fraction) for s in shards], weights)
    compute = ray.data.TaskPoolStrategy(size=num_workers)
    sources_rows = []
    for src, keeps in zip(shards, plan, strict=True):
        with _parquet_reader_v1():
            rows = ray.data.read_parquet(
                src.paths,
                filesystem=src.fs,
                # file order changes every pass, reproducibly (seed + pass count)
                shuffle=ray.data.FileShuffleConfig(seed=seed + epoch, reseed_after_execution=True)
                if shuffle_files
                else None,
                num_cpus=cpus_per_task,
                # fused read + map: one block per shard (a split read is not fused) and the maps' task limit
                concurrency=num_workers if per_source else None,
                override_num_blocks=len(src.paths) if per_source else None,
            ).select_columns(list(columns))
        rows = rows.map_batches(
            _select,
            batch_format="pyarrow",
            compute=compute,
            num_cpus=cpus_per_task,
            fn_kwargs={"fraction": fraction, "keeps": keeps, "seed": seed, "epoch": epoch},
        )
        sources_rows.append(per_source(rows) if per_source else rows)
    if len(sources_rows) == 1:
        return sources_rows[0]
    # keeps the ratio throughout the epoch; every row is produced (the plan already fixed the counts)
    return sources_rows[0].mix(
        *sources_rows[1:],
        weights=weights,
        stopping_condition=ray.data.MixStoppingCondition.STOP_ON_LONGEST_DROP,
    )


def train_dataset(
    sources: Sequence[tuple[str, float]],
    split: str,
    model_cfg: DetectorConfig,
    aug_cfg: AugmentConfig,
    seed: int,
    fraction: float = 1.0,
    *,
    epoch: int = 0,
    batch_size: int = MAP_BATCH_SIZE,
    num_workers: int = NUM_WORKERS,
    cpus_per_task: float = 1.0,
    object_store_budget_gib: float | None = None,
    deterministic: bool = False,
) -> ray.data.Dataset:
    """Training batches from (manifest_uri, weight) sources: {"image": (B, 3, S, S) float32, <targets of
    model_cfg.head's codec>: (B, ...) float32} with S = aug_cfg.crop_size = model_cfg.input_size.

    `epoch`: the epoch of the first pass (a resumed run passes the epoch it resumes at). `cpus_per_task`: CPUs
    each read / augmentation task reserves (lower it when trainer workers hold the machine's CPUs).
    `object_store_budget_gib`: cap on the object-store memory the stream may fill (`with_budget`).
    `deterministic`: rows in the same order on every run (`preserve_order`; see the module docstring)."""
    from tcm.build import build_codec  # driver only: see the module docstring

    check_sizes(model_cfg, aug_cfg)
    codec = build_codec(model_cfg.head)

    def augment(rows: ray.data.Dataset) -> ray.data.Dataset:
        # In the read task itself (one per shard, its outputs leaving as they are made): only augmented blocks
        # are ever stored. A separate read operator ran ahead of the augmentation and queued the raw images,
        # up to its share of the object-store budget: 0.6 GB for 20 000 images, ~0 for 2 000
        # (benchmarks/scale_ingest.py), so memory grew with the dataset until that cap.
        return rows.map_batches(
            _encode_block_ray,
            batch_size=None,  # the whole block: encode batches inside (`_encode_block_ray`), or no fusion
            batch_format="pyarrow",
            compute=ray.data.TaskPoolStrategy(size=num_workers),
            num_cpus=cpus_per_task,
            # epoch 0 + the pass counter, which starts at `epoch` (below)
            fn_kwargs={"codec": codec, "model_cfg": model_cfg, "aug_cfg": aug_cfg, "seed": seed, "epoch": 0,
                       "batch_size": batch_size},  # fmt: skip
        )

    encoded = select_rows(
        sources,
        split,
        seed=seed,
        fraction=fraction,
        num_workers=num_workers,
        cpus_per_task=cpus_per_task,
        per_source=augment,
    )
    # pass k of this Dataset is epoch `epoch + k` of the run, for the file order (Ray's FileShuffleConfig hashes
    # (seed, pass)), the mixing subsets and the augmentation alike: a resumed run continues all three
    encoded.context._execution_idx = epoch
    encoded.context.execution_options.preserve_order = deterministic
    with_budget(encoded.context.execution_options, object_store_budget_gib)
    encoded.context.target_max_block_size = TRAIN_BLOCK_MIB * 2**20
    return encoded


def with_budget(options: ray.data.ExecutionOptions, budget_gib: float | None) -> ray.data.ExecutionOptions:
    """Cap the object-store memory a streaming execution may fill (in place; None leaves Ray's default).

    Ray Train replaces a split dataset's options with its own (`ray.train.DataConfig`): the trainer passes
    options built here too (pipelines/train.py), so the cap holds under Train as well."""
    if budget_gib is not None:
        limits = options.resource_limits
        options.resource_limits = limits.copy(object_store_memory=int(budget_gib * 2**30))
    return options


def eval_dataset(
    manifest_uri: str,
    split: str,
    model_cfg: DetectorConfig,
    *,
    long_side: int,
    short_side: int,
    max_side: int | None = None,
    fraction: float = 1.0,
    batch_size: int = MAP_BATCH_SIZE,
    num_workers: int = NUM_WORKERS,
    cpus_per_task: float = 1.0,
) -> ray.data.Dataset:
    """Validation / test rows, no augmentation: keep-ratio resize (long_side, short_side) as mmcv, each image
    padded only to multiples of 32 (`eval_row`; `max_side` caps the longer side). Columns: image (B,) of
    (3, H_i, W_i) float32 (sizes differ: consumers batch equal sizes, pipelines.evaluate.size_groups), id,
    scale (B, 2) = (sx, sy) for Codec.decode, width, height (original), gt_polygons / gt_ignore (JSON, original
    pixels; see `parse_gt`)."""
    rows = select_rows(
        [(manifest_uri, 1.0)],
        split,
        seed=0,
        fraction=fraction,
        num_workers=num_workers,
        cpus_per_task=cpus_per_task,
        shuffle_files=False,
    )
    return rows.map_batches(
        encode_eval_batch,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.TaskPoolStrategy(size=num_workers),
        num_cpus=cpus_per_task,
        fn_kwargs={
            "model_cfg": model_cfg,
            "long_side": long_side,
            "short_side": short_side,
            "max_side": max_side,
        },
    )
