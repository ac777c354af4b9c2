"""Ingest: a dataset in its native layout (folder or bucket) -> validated unified rows as Parquet shards.

Plan on the driver (list, pair by the dataset's own naming, split into fixed shards), work on Ray Data (each
shard: read, validate, write its Parquet file), commit on the driver (manifest.json written last, atomically).
Shard names and contents are a pure function of the input, so a re-run after a crash rewrites the same files
and only the manifest decides what exists: nothing half-written is ever counted, nothing is counted twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import posixpath
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.sources import Limits, Source, open_source
from pipelines.storage import Location
from tcm.data.formats import get_format
from tcm.data.validate import ImageError, inspect_image, validate_instances
from tcm.types import AnnotationError

SCHEMA_VERSION = 1
ROWS_PER_SHARD = 256  # ~25 MB of JPEG bytes per shard at IC15 sizes: big enough for S3, small enough to stream

ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("image", pa.binary()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("polygons", pa.list_(pa.list_(pa.float64()))),
        ("ignore", pa.list_(pa.bool_())),
        ("texts", pa.list_(pa.string())),
    ]
)

# Word datasets (LMDB, ICDAR 2015 task 4.3 crops, synthetic words, crops of the rows above): one row per word.
WORD_ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("image", pa.binary()),  # the word image's encoded bytes (PNG for crops we cut ourselves)
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("label", pa.string()),
    ]
)
ROW_KINDS = {"detection": ROW_SCHEMA, "words": WORD_ROW_SCHEMA}


class IngestError(RuntimeError):
    """The ingest cannot run at all (missing source, unwritable destination, unknown format)."""


@dataclass
class Pair:
    key: str
    image: str | None  # path relative to the source root
    annotation: str | None


@dataclass
class Plan:
    pairs: list[Pair]
    quarantined: list[dict] = field(default_factory=list)


def plan_pairs(files: list[str], fmt_name: str) -> Plan:
    """Pair images with annotations by the dataset's naming, anywhere under the source root."""
    fmt = get_format(fmt_name)
    images: dict[str, list[str]] = {}
    annotations: dict[str, list[str]] = {}
    for rel in files:
        name = posixpath.basename(rel)
        if (key := fmt.image_key(name)) is not None:
            images.setdefault(key, []).append(rel)
        elif (key := fmt.annotation_key(name)) is not None:
            annotations.setdefault(key, []).append(rel)
    plan = Plan(pairs=[])
    for key in sorted(set(images) | set(annotations)):
        imgs, anns = images.get(key, []), annotations.get(key, [])
        if len(imgs) > 1 or len(anns) > 1:
            for rel in imgs + anns:
                plan.quarantined.append({"source": rel, "reason": f"ambiguous: {len(imgs)} images and {len(anns)} annotations share key {key!r}"})
        elif not imgs:
            plan.quarantined.append({"source": anns[0], "reason": "annotation without image"})
        elif not anns:
            plan.quarantined.append({"source": imgs[0], "reason": "image without annotation"})
        else:
            plan.pairs.append(Pair(key, imgs[0], anns[0]))
    return plan


def build_row(
    pair: Pair, image: bytes, annotation: bytes, fmt_name: str, dataset: str, split: str
) -> tuple[dict | None, dict | None, int]:
    """Validate one pair from its bytes. Returns (row, quarantine entry, clipped point count)."""
    fmt = get_format(fmt_name)
    try:
        info = inspect_image(image, pair.image)
        instances = fmt.parse(annotation, pair.annotation)
        instances, clipped = validate_instances(instances, info.width, info.height, pair.annotation)
    except (ImageError, AnnotationError) as err:
        return None, {"source": pair.image if isinstance(err, ImageError) else pair.annotation, "reason": str(err)}, 0
    row = {
        "id": f"{dataset}/{split}/{pair.key}",
        "dataset": dataset,
        "split": split,
        "image": image,
        "sha256": hashlib.sha256(image).hexdigest(),
        "width": info.width,
        "height": info.height,
        "polygons": [inst.points.reshape(-1).tolist() for inst in instances],  # (P, 2) -> x0, y0, x1, y1, ...
        "ignore": [bool(inst.ignore) for inst in instances],
        "texts": [inst.text for inst in instances],
    }
    return row, None, clipped


def read_rows(source: Source, pairs: list[Pair], fmt_name: str, dataset: str, split: str):
    """Yield (row, quarantine entry, clipped) for pairs, reading their files in one go per source."""
    blobs = source.read_many([n for p in pairs for n in (p.image, p.annotation)])
    for pair in pairs:
        yield build_row(pair, blobs[pair.image], blobs[pair.annotation], fmt_name, dataset, split)


def row_digest(row: dict) -> str:
    """Content hash of one row: independent of where the data came from and of the Parquet encoding."""
    keys = ("polygons", "ignore", "texts") if "polygons" in row else ("label",)  # detection or word row
    content = {k: row[k] for k in ("id", "sha256", "width", "height", *keys)}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def write_shard(dst: Location, relpath: str, rows: list[dict], schema: pa.Schema = ROW_SCHEMA) -> dict:
    """Write rows as one Parquet file at DST/relpath (atomically; nothing when there are no rows). Returns the
    shard part of a summary: relpath (None when empty), rows, digests (one per row, for the manifest hash)."""
    if rows:
        table = pa.Table.from_pylist(rows, schema=schema)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", write_statistics=False)
        storage.write_bytes(dst.join(relpath), buf.getvalue())
    return {"relpath": relpath if rows else None, "rows": len(rows), "digests": [row_digest(r) for r in rows]}


def process_shard(task: dict) -> dict:
    """Ray Data UDF: build the rows of one shard and write its Parquet file (atomically). Returns a summary."""
    rows, quarantined, clipped = [], [], 0
    for row, bad, n in read_rows(task["src"], task["pairs"], task["format"], task["dataset"], task["split"]):
        clipped += n
        if bad is not None:
            quarantined.append(bad)
        else:
            rows.append(row)
    shard = write_shard(task["dst"], task["relpath"], rows)
    return {"index": task["index"], **shard, "quarantined": quarantined, "clipped": clipped}


def _run_task(item: dict, process) -> dict:
    return {"summary": process(pickle.loads(item["task"]))}


def run_shards(tasks: list[dict], progress, process=process_shard) -> list[dict]:
    """Run `process(task)` for every shard task on Ray Data (one task per shard); summaries in shard order.
    A worker error becomes one IngestError line; nothing is committed then."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    # tasks travel pickled (they hold pyarrow filesystems): one shard per block, one Ray task each
    items = [{"task": pickle.dumps(t)} for t in tasks]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(tasks)))
    try:
        out = ds.map(_run_task, fn_kwargs={"process": process}).take_all()
    except Exception as err:  # Ray wraps worker errors; surface the cause as one line
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
        message = lines[-1] if lines else type(cause).__name__
        raise IngestError(f"ingest failed, nothing was committed (re-run to resume): {message}") from None
    summaries = sorted((r["summary"] for r in out), key=lambda s: s["index"])
    for s in summaries:
        progress(f"shard {s['index']:05d}: {s['rows']} rows, {len(s['quarantined'])} quarantined")
    return summaries


def read_manifest(uri: str) -> dict:
    loc = storage.resolve(uri).join("manifest.json")
    if not storage.exists(loc):
        raise IngestError(f"{loc.uri}: no manifest (run `tcm ingest` first)")
    return json.loads(storage.read_bytes(loc))


def shard_uris(uri: str, split: str) -> list[str]:
    manifest = read_manifest(uri)
    if split not in manifest["files"]:
        raise IngestError(f"{uri}: no split {split!r} in the manifest (have {sorted(manifest['files'])})")
    root = storage.resolve(uri)
    return [root.join(rel).uri for rel in manifest["files"][split]]


def ingest(
    fmt_name: str,
    src_uri: str | list[str],
    dst_uri: str,
    split: str,
    dataset: str | None = None,
    rows_per_shard: int = ROWS_PER_SHARD,
    progress=print,
    limits: Limits | None = None,
    only: set[str] | None = None,
) -> dict:
    """Ingest one split of one dataset into DST and update DST/manifest.json. Returns the manifest."""
    get_format(fmt_name)  # unknown format -> clear error before any I/O
    dataset = dataset or fmt_name
    started = time.monotonic()
    src_uris = [src_uri] if isinstance(src_uri, str) else list(src_uri)
    shown = ", ".join(storage.redact_uri(u) for u in src_uris)  # never a `key:secret@` in logs or manifests
    try:
        src = open_source(src_uris, limits)
        files = src.list()
        if only is not None:  # a delta: just these files (retraining ingests only what is new)
            files = [f for f in files if f in only]
        dst = storage.resolve(dst_uri)
        storage.check_writable(dst)
    except storage.StorageError as err:
        raise IngestError(str(err)) from None
    plan = plan_pairs(files, fmt_name)
    plan.quarantined[:0] = src.refused
    progress(f"ingest {fmt_name} {split}: {len(files)} files in {shown}, {len(plan.pairs)} image/annotation pairs")
    tasks = [
        {
            "index": i,
            "relpath": f"{split}/part-{i:05d}.parquet",
            "pairs": plan.pairs[start : start + rows_per_shard],
            "src": src,
            "dst": dst,
            "format": fmt_name,
            "dataset": dataset,
            "split": split,
        }
        for i, start in enumerate(range(0, len(plan.pairs), rows_per_shard))
    ]
    summaries = run_shards(tasks, progress) if tasks else []
    quarantined = plan.quarantined + [q for s in summaries for q in s["quarantined"]]
    details = {
        "format": fmt_name,
        "dataset": dataset,
        "source": shown,
        "rows": sum(s["rows"] for s in summaries),
        "files": [s["relpath"] for s in summaries if s["relpath"]],
        "quarantined": quarantined,
        "clipped_points": sum(s["clipped"] for s in summaries),
        "sha256": content_hash(summaries),
    }
    manifest = commit(dst, split, details)
    progress(
        f"ingest {fmt_name} {split}: {details['rows']} rows, {len(quarantined)} quarantined, "
        f"{details['clipped_points']} points clipped ({time.monotonic() - started:.1f} s) -> {dst.uri}\n"
        f"manifest sha256 {manifest['sha256']}"
    )
    return manifest


def content_hash(summaries: list[dict]) -> str:
    """The hash of one split: its rows' digests in shard order."""
    return hashlib.sha256("".join(d for s in summaries for d in s["digests"]).encode()).hexdigest()


def _merge_counts(dicts) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for reason, n in d.items():
            out[reason] = out.get(reason, 0) + n
    return dict(sorted(out.items()))


def commit(dst: Location, split: str, details: dict, row_kind: str = "detection") -> dict:
    """Merge this split into the manifest and write it last; drop shards of this split it no longer lists.

    `row_kind`: "detection" (unified image rows) or "words" (word rows); one destination holds one kind.
    Word splits carry `filtered` (labels dropped by preprocessing) and `skipped` (degenerate crop polygons)
    as {reason: count}; the manifest sums them over splits."""
    manifest_loc = dst.join("manifest.json")
    old = json.loads(storage.read_bytes(manifest_loc)) if storage.exists(manifest_loc) else {}
    if old and old.get("row_kind", "detection") != row_kind:  # manifests before row_kind held detection rows
        raise IngestError(
            f"{dst.uri}: holds {old.get('row_kind', 'detection')} rows; cannot add {row_kind} rows to it "
            "(use another --dst)"
        )
    splits = dict(old.get("split_details", {}))
    previous = splits.get(split, {}).get("files", [])
    splits[split] = details
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "row_kind": row_kind,
        "rows": sum(d["rows"] for d in splits.values()),
        "splits": {s: d["rows"] for s, d in sorted(splits.items())},
        "files": {s: d["files"] for s, d in sorted(splits.items())},
        "quarantined": [q | {"split": s} for s, d in sorted(splits.items()) for q in d["quarantined"]],
    }
    if row_kind == "detection":
        manifest["clipped_points"] = sum(d["clipped_points"] for d in splits.values())
    else:
        for key in ("filtered", "skipped"):
            manifest[key] = _merge_counts(d.get(key, {}) for d in splits.values())
    manifest["sha256"] = hashlib.sha256(
        "".join(f"{s}:{d['sha256']}" for s, d in sorted(splits.items())).encode()
    ).hexdigest()
    manifest["split_details"] = dict(sorted(splits.items()))
    storage.write_bytes(manifest_loc, json.dumps(manifest, indent=2).encode())
    for rel in set(previous) - set(details["files"]):
        storage.delete_file(dst.join(rel))
    return manifest
