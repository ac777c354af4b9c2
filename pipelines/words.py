"""Word rows: every recognition dataset as Parquet word rows + manifest, and the word training stream.

Three sources, one row form (`pipelines.ingest.WORD_ROW_SCHEMA`: id, dataset, split, image, sha256, width,
height, label) and ingest's own shard writer, Ray shard runner and manifest commit (`row_kind: "words"`):

- crops of already-ingested detection rows (`build_crops`, `tcm ingest --format crops`): every non-ignored
  instance with a transcription becomes a rectified PNG crop (`tcm.data.crops`), one word shard per detection
  shard, on Ray Data CPU workers; no second ingest of the raw data. TD500 has no transcriptions: its
  instances are skipped with that reason;
- LMDB datasets (`ingest_lmdb`, `tcm ingest --format lmdb`), read on the driver (from S3: data.mdb is
  downloaded to a temporary folder first; LMDB needs a local file);
- the ICDAR 2015 task 4.3 folder form (`ingest_words43`, `tcm ingest --format icdar2015-words`), read on
  Ray workers like the detection ingest (folders, archives, s3://).

Labels go through the STR protocol's preprocessing (`tcm.recognition.charset.preprocess_label`, 94-character
training charset by default): the stored label is the preprocessed one. Per word, one outcome is recorded:
a row; `quarantined` (unreadable image, label not UTF-8: {source, reason} entries); `filtered` (label
dropped by the preprocessing: {reason: count}); `skipped` (crops only: degenerate polygon, don't-care or
untranscribed instance: {reason: count}). The manifest keeps all three, plus a few example sources per reason.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from pipelines import storage
from pipelines.ingest import (
    ROWS_PER_SHARD,
    WORD_ROW_SCHEMA,
    IngestError,
    commit,
    content_hash,
    read_manifest,
    run_shards,
    write_shard,
)
from pipelines.sources import open_source
from tcm.data.crops import DegenerateError, crop_word
from tcm.data.formats import icdar2015_words, lmdb_words
from tcm.data.transforms import decode_image
from tcm.data.validate import ImageError, inspect_image
from tcm.recognition.charset import CHARSET_94, Preprocessed, preprocess_label

EXAMPLES_PER_REASON = 5  # sources kept per filter / skip reason in the manifest: enough to look, never huge
WORD_COLUMNS = ["id", "image", "label"]  # what the training stream reads of a word row


@dataclass
class Tally:
    """The outcomes of one shard: rows, quarantine entries, and counts (+ examples) of filtered / skipped."""

    rows: list[dict] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)
    filtered: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def count(self, counts: dict[str, int], reason: str, source: str) -> None:
        key = reason.split(" (")[0]  # "longer than 25 characters ... (31)" -> one key for every length
        counts[key] = counts.get(key, 0) + 1
        seen = self.examples.setdefault(key, [])
        if len(seen) < EXAMPLES_PER_REASON:
            seen.append(source)

    def summary(self, index: int, shard: dict) -> dict:
        return {"index": index, **shard, "quarantined": self.quarantined, "filtered": self.filtered,
                "skipped": self.skipped, "examples": self.examples}  # fmt: skip


def word_row(
    tally: Tally, *, dataset: str, split: str, key: str, image: bytes, label: str, source: str, charset: str
) -> None:
    """Validate one word (image decodes fully, label survives preprocessing) into `tally`."""
    try:
        info = inspect_image(image, source)
    except ImageError as err:
        tally.quarantined.append({"source": source, "reason": str(err)})
        return
    done = preprocess_label(label, charset) if label.strip() else Preprocessed(None, "empty label")
    if done.label is None:
        tally.count(tally.filtered, done.reason, source)
        return
    tally.rows.append(
        {
            "id": f"{dataset}/{split}/{key}",
            "dataset": dataset,
            "split": split,
            "image": image,
            "sha256": hashlib.sha256(image).hexdigest(),
            "width": info.width,
            "height": info.height,
            "label": done.label,
        }
    )


def _details(fmt: str, dataset: str, source: str, charset: str, summaries: list[dict], quarantined: list[dict]) -> dict:
    """The split entry of a words manifest from shard summaries (plus quarantine found while planning)."""
    merged: dict[str, dict[str, int]] = {"filtered": {}, "skipped": {}}
    examples: dict[str, list[str]] = {}
    for s in summaries:
        for key in merged:
            for reason, n in s[key].items():
                merged[key][reason] = merged[key].get(reason, 0) + n
        for reason, seen in s["examples"].items():
            examples[reason] = (examples.get(reason, []) + seen)[:EXAMPLES_PER_REASON]
    return {
        "format": fmt,
        "dataset": dataset,
        "source": source,
        "charset": charset,
        "rows": sum(s["rows"] for s in summaries),
        "files": [s["relpath"] for s in summaries if s["relpath"]],
        "quarantined": quarantined + [q for s in summaries for q in s["quarantined"]],
        "filtered": dict(sorted(merged["filtered"].items())),
        "skipped": dict(sorted(merged["skipped"].items())),
        "examples": dict(sorted(examples.items())),
        "sha256": content_hash(summaries),
    }


def _finish(dst: storage.Location, split: str, details: dict, started: float, progress) -> dict:
    manifest = commit(dst, split, details, row_kind="words")
    n_filtered, n_skipped = sum(details["filtered"].values()), sum(details["skipped"].values())
    progress(
        f"ingest {details['format']} {split}: {details['rows']} word rows, {len(details['quarantined'])} "
        f"quarantined, {n_filtered} filtered, {n_skipped} skipped ({time.monotonic() - started:.1f} s) -> "
        f"{dst.uri}\nmanifest sha256 {manifest['sha256']}"
    )
    return manifest


def _destination(dst_uri: str) -> storage.Location:
    try:
        dst = storage.resolve(dst_uri)
        storage.check_writable(dst)
    except storage.StorageError as err:
        raise IngestError(str(err)) from None
    return dst


# ---------------------------------------------------------------------------------------------------------------
# crops of detection rows


def crop_row(row: Mapping[str, Any], tally: Tally, charset: str) -> None:
    """Every instance of one unified detection row -> a word row (PNG crop) or a counted reason."""
    row_id = str(row["id"])
    texts, ignore, polygons = list(row["texts"] or []), list(row["ignore"] or []), list(row["polygons"] or [])
    for k in range(len(polygons)):
        if ignore[k]:
            tally.count(tally.skipped, "don't-care instance", f"{row_id}/{k}")
        elif not texts[k]:
            reason = "no transcription: TD500 stores none" if row["dataset"] == "td500" else "no transcription"
            tally.count(tally.skipped, reason, f"{row_id}/{k}")
    wanted = [k for k in range(len(polygons)) if not ignore[k] and texts[k]]
    if not wanted:
        return
    try:
        image = decode_image(row["image"])  # (H, W, 3) uint8 BGR
    except ValueError as err:
        tally.quarantined.append({"source": row_id, "reason": f"image does not decode ({err})"})
        return
    for k in wanted:
        source = f"{row_id}/{k}"
        try:
            crop = crop_word(image, np.asarray(polygons[k], np.float64))
        except DegenerateError as err:
            tally.count(tally.skipped, f"degenerate polygon: {err}", source)
            continue
        ok, png = cv2.imencode(".png", crop)
        if not ok:
            tally.quarantined.append({"source": source, "reason": "crop does not encode as PNG"})
            continue
        name = row_id.split("/", 2)[-1]  # dataset/split/name -> name
        word_row(tally, dataset=str(row["dataset"]), split=str(row["split"]), key=f"{name}/{k}",
                 image=png.tobytes(), label=texts[k], source=source, charset=charset)  # fmt: skip


def _rows(batch: pa.Table | Mapping[str, Any]) -> list[dict]:
    if isinstance(batch, pa.Table):
        return batch.to_pylist()
    cols = {k: list(v) for k, v in batch.items()}
    return [{k: v[i] for k, v in cols.items()} for i in range(len(next(iter(cols.values()), [])))]


def crop_tally(rows: Iterable[Mapping[str, Any]], charset: str = CHARSET_94) -> Tally:
    tally = Tally()
    for row in rows:
        crop_row(row, tally, charset)
    return tally


def crop_batch(batch: pa.Table | Mapping[str, Any], *, charset: str = CHARSET_94) -> pa.Table:
    """Ray Data `map_batches` UDF: detection rows -> word rows with `outcome` "ok", plus one record per
    instance that gave no row: `outcome` "skipped" / "filtered" / "quarantined", its `reason`, no image."""
    tally = crop_tally(_rows(batch), charset)
    n = len(tally.rows)
    words = pa.Table.from_pylist(tally.rows, schema=WORD_ROW_SCHEMA)
    words = words.append_column("outcome", pa.array(["ok"] * n, pa.string()))
    words = words.append_column("reason", pa.array([""] * n, pa.string()))
    dropped = [(o, r) for o, counts in (("skipped", tally.skipped), ("filtered", tally.filtered))
               for r, k in counts.items() for _ in range(k)]  # fmt: skip
    dropped += [("quarantined", q["reason"]) for q in tally.quarantined]
    if not dropped:
        return words
    extra = {name: [None] * len(dropped) for name in WORD_ROW_SCHEMA.names}
    extra |= {"outcome": [o for o, _ in dropped], "reason": [r for _, r in dropped]}
    return pa.concat_tables([words, pa.Table.from_pydict(extra, schema=words.schema)])


def crop_dataset(manifest_uri: str, split: str, *, charset: str = CHARSET_94, num_workers: int = 2):
    """The crop stage as a Ray Dataset (streamed, nothing written): `crop_batch`'s columns."""
    import ray.data

    from pipelines.augment import manifest_shards

    shards = manifest_shards(manifest_uri, split)
    rows = ray.data.read_parquet(shards.paths, filesystem=shards.fs, override_num_blocks=len(shards.paths))
    return rows.map_batches(
        crop_batch,
        batch_format="pyarrow",
        batch_size=16,  # detection rows per call: a few MB of images in, their crops out
        compute=ray.data.TaskPoolStrategy(size=num_workers),
        fn_kwargs={"charset": charset},
    )


def process_crop_shard(task: dict) -> dict:
    """Ray task: one detection shard -> one word shard (same index), written atomically; its summary."""
    src: storage.Location = task["src"]
    tally = crop_tally(pq.read_table(src.path, filesystem=src.fs).to_pylist(), task["charset"])
    return tally.summary(task["index"], write_shard(task["dst"], task["relpath"], tally.rows, WORD_ROW_SCHEMA))


def build_crops(
    src_uri: str, dst_uri: str, split: str, *, charset: str = CHARSET_94, progress=print
) -> dict:
    """Word rows from the detection rows of DST `src_uri` (an ingest destination), split `split`, into
    `dst_uri`: one word shard per detection shard, on Ray. Returns the words manifest."""
    started = time.monotonic()
    manifest = read_manifest(src_uri)
    if manifest.get("row_kind", "detection") != "detection":
        raise IngestError(f"{storage.redact_uri(src_uri)}: holds {manifest['row_kind']} rows, not detection rows")
    if split not in manifest.get("files", {}):
        raise IngestError(f"{storage.redact_uri(src_uri)}: no split {split!r} (have {sorted(manifest['files'])})")
    root, dst = storage.resolve(src_uri), _destination(dst_uri)
    rels = manifest["files"][split]
    tasks = [
        {"index": i, "src": root.join(rel), "dst": dst, "relpath": f"{split}/part-{i:05d}.parquet", "charset": charset}
        for i, rel in enumerate(rels)
    ]
    progress(f"crops {split}: {len(rels)} detection shards in {root.uri}")
    summaries = run_shards(tasks, progress, process=process_crop_shard) if tasks else []
    dataset = manifest.get("split_details", {}).get(split, {}).get("dataset", "")
    details = _details("crops", dataset, root.uri, charset, summaries, [])
    return _finish(dst, split, details, started, progress)


# ---------------------------------------------------------------------------------------------------------------
# LMDB


def _local_lmdb(src: storage.Location, tmp: str) -> str:
    """A local folder holding the LMDB's data.mdb: the folder itself, or a download of it from object storage."""
    if not src.is_s3:
        return src.path
    data = src.join("data.mdb")
    if not storage.exists(data):
        raise IngestError(f"{src.uri}: no data.mdb (an LMDB dataset is a folder / prefix holding data.mdb)")
    for name in ("data.mdb", "lock.mdb"):  # lock.mdb is optional: datasets are opened without locking
        loc = src.join(name)
        if name == "data.mdb" or storage.exists(loc):
            try:
                storage.retrying(
                    lambda loc=loc, name=name: pafs.copy_files(
                        loc.path, str(Path(tmp) / name), source_filesystem=loc.fs,
                        destination_filesystem=pafs.LocalFileSystem(),
                    ),
                    True,
                )  # fmt: skip
            except OSError as err:
                raise IngestError(f"{loc.uri}: cannot download ({err})") from None
    return tmp


def ingest_lmdb(
    src_uri: str,
    dst_uri: str,
    split: str,
    *,
    dataset: str | None = None,
    rows_per_shard: int = ROWS_PER_SHARD,
    charset: str = CHARSET_94,
    progress=print,
) -> dict:
    """An LMDB recognition dataset (folder or s3:// prefix holding data.mdb) -> word shards + manifest.
    A missing `num-samples` / `image-%09d` / `label-%09d` key is one IngestError naming it (nothing committed)."""
    started = time.monotonic()
    dataset = dataset or "lmdb"
    src, dst = storage.resolve(src_uri), _destination(dst_uri)
    summaries: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tcm-lmdb-") as tmp:
        path = _local_lmdb(src, tmp)
        try:
            n = lmdb_words.check_keys(path)
            progress(f"ingest lmdb {split}: {n} samples in {src.uri}")
            tally, index = Tally(), 0
            for i, image, raw_label in lmdb_words.read_samples(path):
                source = f"{src.uri}:{lmdb_words.label_key(i).decode()}"
                try:
                    label = raw_label.decode("utf-8")
                except UnicodeDecodeError:
                    tally.quarantined.append({"source": source, "reason": "label is not UTF-8"})
                else:
                    word_row(tally, dataset=dataset, split=split, key=f"{i:09d}", image=image, label=label,
                             source=f"{src.uri}:{lmdb_words.image_key(i).decode()}", charset=charset)  # fmt: skip
                if i % rows_per_shard == 0 or i == n:
                    shard = write_shard(dst, f"{split}/part-{index:05d}.parquet", tally.rows, WORD_ROW_SCHEMA)
                    summaries.append(tally.summary(index, shard))
                    progress(f"shard {index:05d}: {shard['rows']} rows")
                    tally, index = Tally(), index + 1
        except lmdb_words.LmdbFormatError as err:
            raise IngestError(str(err).replace(tmp, src.uri)) from None
    details = _details("lmdb", dataset, src.uri, charset, summaries, [])
    return _finish(dst, split, details, started, progress)


# ---------------------------------------------------------------------------------------------------------------
# ICDAR 2015 task 4.3 folders


def process_words43_shard(task: dict) -> dict:
    """Ray task: read the images of one shard of labels, validate them, write the word shard."""
    blobs = task["src"].read_many([rel for rel, _ in task["items"]])
    tally = Tally()
    for rel, text in task["items"]:
        key = rel.rsplit(".", 1)[0].replace("/", "_")
        word_row(tally, dataset=task["dataset"], split=task["split"], key=key, image=blobs[rel], label=text,
                 source=rel, charset=task["charset"])  # fmt: skip
    return tally.summary(task["index"], write_shard(task["dst"], task["relpath"], tally.rows, WORD_ROW_SCHEMA))


def ingest_words43(
    src_uri: str | list[str],
    dst_uri: str,
    split: str,
    *,
    dataset: str | None = None,
    rows_per_shard: int = ROWS_PER_SHARD,
    charset: str = CHARSET_94,
    progress=print,
) -> dict:
    """A task 4.3 cropped-word folder / archive (local or s3://) -> word shards + manifest, on Ray."""
    started = time.monotonic()
    dataset = dataset or "icdar2015-words"
    uris = [src_uri] if isinstance(src_uri, str) else list(src_uri)
    shown = ", ".join(storage.redact_uri(u) for u in uris)
    try:
        src = open_source(uris)
        files = src.list()
        gt = icdar2015_words.find_label_file(files)
        labels = icdar2015_words.read_labels(src.read_many([gt])[gt], gt)
    except (storage.StorageError, ValueError) as err:  # AnnotationError is a ValueError: file and line
        raise IngestError(str(err)) from None
    dst = _destination(dst_uri)
    images = icdar2015_words.image_files(files, gt)
    quarantined = list(src.refused)
    items = []
    for label in labels:
        if label.name in images:
            items.append((images[label.name], label.text))
        else:
            quarantined.append({"source": f"{gt}:{label.line}", "reason": f"{label.name}: no such image"})
    listed = {label.name for label in labels}
    quarantined += [{"source": rel, "reason": f"image without a line in {gt}"}
                    for name, rel in sorted(images.items()) if name not in listed]  # fmt: skip
    progress(f"ingest icdar2015-words {split}: {len(items)} labelled images in {shown}")
    tasks = [
        {"index": i, "items": items[start : start + rows_per_shard], "src": src, "dst": dst,
         "relpath": f"{split}/part-{i:05d}.parquet", "dataset": dataset, "split": split, "charset": charset}
        for i, start in enumerate(range(0, len(items), rows_per_shard))
    ]  # fmt: skip
    summaries = run_shards(tasks, progress, process=process_words43_shard) if tasks else []
    details = _details("icdar2015-words", dataset, shown, charset, summaries, quarantined)
    return _finish(dst, split, details, started, progress)


# ---------------------------------------------------------------------------------------------------------------
# the training stream


def encode_word_batch(
    batch: pa.Table | Mapping[str, Any], *, aug_cfg, seed: int, epoch: int, augment: bool = True
) -> dict[str, np.ndarray]:
    """Word rows (id, image, label[, repeat]) -> {"image": (B, 3, H, W) float32, "label": (B,) str}: decode,
    RandAugment (seeded by (seed, epoch + pass, repeat, id), see `pipelines.augment.row_rng`), resize, normalise."""
    from pipelines.augment import _pass_index, row_rng
    from tcm.data.word_augment import augment_word, rand_augment, to_model_input

    ra = rand_augment(aug_cfg) if augment else None
    images, labels = [], []
    for row in _rows(batch):
        try:
            with Image.open(io.BytesIO(row["image"])) as img:
                image = img.convert("RGB")
        except (OSError, ValueError) as err:
            raise ValueError(f"row {row['id']!r}: image does not decode ({err})") from None
        if ra is not None:
            rng = row_rng(seed, epoch + _pass_index(), int(row.get("repeat") or 0), str(row["id"]))
            image = augment_word(image, int(rng.integers(0, 2**32)), ra)
        images.append(to_model_input(image, aug_cfg))
        labels.append(row["label"])
    if not images:
        return {}
    return {"image": np.stack(images), "label": np.array(labels, dtype=object)}  # (B, 3, H, W), (B,)


def word_train_dataset(
    sources: list[tuple[str, float]],
    split: str,
    *,
    aug_cfg=None,
    seed: int = 0,
    epoch: int = 0,
    fraction: float = 1.0,
    augment: bool = True,
    batch_size: int = 32,  # words per encode call: 32 x 3 x 224 x 224 float32 = 19 MB
    num_workers: int = 2,  # concurrent CPU tasks: the 2-core CI machine; raise on a cluster
    cpus_per_task: float = 1.0,
    deterministic: bool = False,
):
    """Training batches from word manifests (mixed by weight, few-shot fraction, per-pass reshuffle: the
    detection stream's `select_rows`): {"image": (B, 3, H, W) float32, "label": (B,) str}.
    `deterministic`: rows in the same order on every run (Ray Data's `preserve_order`, as for detection)."""
    import ray.data

    from pipelines.augment import select_rows
    from tcm.data.word_augment import WordAugmentConfig

    rows = select_rows(sources, split, seed=seed, fraction=fraction, epoch=epoch, num_workers=num_workers,
                       cpus_per_task=cpus_per_task, columns=WORD_COLUMNS)  # fmt: skip
    rows.context.execution_options.preserve_order = deterministic
    return rows.map_batches(
        encode_word_batch,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.TaskPoolStrategy(size=num_workers),
        num_cpus=cpus_per_task,
        fn_kwargs={"aug_cfg": aug_cfg or WordAugmentConfig(), "seed": seed, "epoch": epoch, "augment": augment},
    )
