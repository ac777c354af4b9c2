"""Ray Data augmentation pipeline on a local 2-CPU Ray: batches, few-shot subset, mixing, manifest-only reads."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from pipelines.augment import (
    TRAIN_BLOCK_MIB,
    encode_batch,
    eval_dataset,
    in_fraction,
    mixing_plan,
    parse_gt,
    select_rows,
    train_dataset,
)
from tcm.build import build_codec
from tcm.config import DetectorConfig, PANHeadConfig
from tcm.data.synth import render_image
from tcm.data.transforms import AugmentConfig

pytestmark = pytest.mark.integration

MODEL = DetectorConfig.tiny()  # input_size 128
AUG = AugmentConfig(crop_size=128)
DB_KEYS = {"image", "gt_shrink", "gt_shrink_mask", "gt_thr", "gt_thr_mask", "aux_text", "aux_mask"}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # address="local": a private instance, never a cluster another process started on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield
    ray.shutdown()


def _row(
    dataset: str, split: str, k: int, image: bytes, polygons: list[list[float]], ignore: list[bool]
) -> dict:
    return {
        "id": f"{dataset}/{split}/{k}",
        "dataset": dataset,
        "split": split,
        "image": image,
        "sha256": hashlib.sha256(image).hexdigest(),
        "width": 0,
        "height": 0,
        "polygons": polygons,
        "ignore": ignore,
        "texts": ["" for _ in ignore],
    }


def write_shards(
    root: Path, dataset: str, n: int, split: str = "train", rows_per_shard: int = 8, images: bool = True
) -> str:
    """Unified rows as Parquet shards + manifest.json (the layout ingest writes). images=False: 1-byte stand-ins
    (for tests that never decode)."""
    rows = []
    for k in range(n):
        if images:
            image, instances = render_image(np.random.default_rng([7, k]), 96, 128)
            data = cv2.imencode(".png", image)[1].tobytes()
            polys = [inst.points.reshape(-1).tolist() for inst in instances]
            ignore = [inst.ignore for inst in instances]
        else:
            data, polys, ignore = b"x", [], []
        row = _row(dataset, split, k, data, polys, ignore)
        if images:
            row["height"], row["width"] = 96, 128
        rows.append(row)
    files = []
    (root / split).mkdir(parents=True, exist_ok=True)
    for i, start in enumerate(range(0, n, rows_per_shard)):
        rel = f"{split}/part-{i:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[start : start + rows_per_shard]), root / rel)
        files.append(rel)
    manifest = {"schema_version": 1, "rows": n, "splits": {split: n}, "files": {split: files}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return str(root)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> str:
    return write_shards(tmp_path_factory.mktemp("synth"), "synth", 6, rows_per_shard=3)


def _batches(ds) -> list[dict[str, np.ndarray]]:
    return list(ds.iter_batches(batch_size=None, batch_format="numpy"))


def _digests(ds) -> list[str]:
    """One digest per output image, sorted: the content of a pass regardless of row order."""
    return sorted(hashlib.sha256(img.tobytes()).hexdigest() for b in _batches(ds) for img in b["image"])


def test_train_batches_have_image_and_db_targets(synth):
    ds = train_dataset([(synth, 1.0)], "train", MODEL, AUG, seed=0)
    batches = _batches(ds)
    assert sum(len(b["image"]) for b in batches) == 6
    b = batches[0]
    assert set(b) == DB_KEYS
    B = len(b["image"])
    assert b["image"].shape == (B, 3, 128, 128) and b["image"].dtype == np.float32
    for key in DB_KEYS - {"image"}:
        assert b[key].shape == (B, 128, 128) and b[key].dtype == np.float32, key
    shrink = np.concatenate([x["gt_shrink"] for x in batches])
    assert shrink.max() == 1.0 and shrink.mean() > 0.005  # text made it through the crop into the targets
    # the image was normalised with the model's mean/std: the zero padding maps to -mean/std
    pad = -np.asarray(MODEL.pixel_mean) / np.asarray(MODEL.pixel_std)
    corners = np.concatenate([x["image"][:, :, -1, -1] for x in batches])  # (6, 3) bottom-right pixels
    assert any(np.allclose(c, pad, atol=1e-5) for c in corners)


def _local_digests(synth: str, model: DetectorConfig, seed: int, epoch: int) -> tuple[list[str], dict]:
    """encode_batch run by hand over every listed shard (what a torch DataLoader worker would do)."""
    manifest = json.loads(Path(synth, "manifest.json").read_text())
    table = pa.concat_tables(pq.read_table(Path(synth, rel)) for rel in manifest["files"]["train"])
    out = encode_batch(
        table, codec=build_codec(model.head), model_cfg=model, aug_cfg=AUG, seed=seed, epoch=epoch
    )
    return sorted(hashlib.sha256(img.tobytes()).hexdigest() for img in out["image"]), out


def test_passes_are_epochs_reproducible_and_equal_to_the_plain_function(synth):
    run = train_dataset([(synth, 1.0)], "train", MODEL, AUG, seed=1)
    first, second = _digests(run), _digests(run)
    assert second != first  # the second pass over a Dataset is epoch 1: new augmentation
    assert (
        _digests(train_dataset([(synth, 1.0)], "train", MODEL, AUG, seed=1)) == first
    )  # a new run: same epoch 0
    # a run resumed at epoch 1 draws exactly what the uninterrupted run drew in its second pass
    assert _digests(train_dataset([(synth, 1.0)], "train", MODEL, AUG, seed=1, epoch=1)) == second
    # the plain function gives the same images as Ray Data; another seed gives others
    assert _local_digests(synth, MODEL, seed=1, epoch=0)[0] == first
    assert _local_digests(synth, MODEL, seed=2, epoch=0)[0] != first


def test_pan_head_targets_through_the_same_function(synth):
    model = MODEL.with_head(PANHeadConfig(neck_channels=32))
    _, out = _local_digests(synth, model, seed=0, epoch=0)
    assert {"image", "gt_text", "gt_kernel", "gt_mask", "aux_text", "aux_mask"} == set(out)
    assert out["gt_text"].shape == (6, 128, 128) and out["gt_text"].dtype == np.float32


def test_crop_size_must_match_model_input(synth):
    with pytest.raises(ValueError, match="input_size=128"):
        train_dataset([(synth, 1.0)], "train", MODEL, AugmentConfig(crop_size=640), seed=0)


def _ids(ds) -> list[str]:
    return [r["id"] for r in ds.iter_rows()]


def test_fraction_is_a_stable_nested_subset_of_about_the_right_size(tmp_path):
    ids = [f"big/train/{k}" for k in range(400)]
    half, tenth = in_fraction(ids, 0.5), in_fraction(ids, 0.1)
    np.testing.assert_array_equal(half, in_fraction(list(ids), 0.5))  # a pure function of the id
    assert 160 <= half.sum() <= 240  # binomial(400, 0.5): 200 +- 4 sigma
    assert 20 <= tenth.sum() <= 60
    assert not (tenth & ~half).any()  # the 10 % subset is nested in the 50 % one
    # the pipeline keeps exactly that subset, whatever the seed
    src = write_shards(tmp_path, "big", 400, rows_per_shard=100, images=False)
    got = _ids(select_rows([(src, 1.0)], "train", seed=5, fraction=0.5, columns=["id"]))
    assert sorted(got) == sorted(i for i, keep in zip(ids, half, strict=True) if keep)


def test_mixing_weights_set_the_proportions(tmp_path):
    a = write_shards(tmp_path / "a", "a", 120, rows_per_shard=40, images=False)
    b = write_shards(tmp_path / "b", "b", 30, rows_per_shard=15, images=False)

    # natural sizes 120 : 30 (b = 20 %); equal weights: 75 + 75 of an epoch of 150, b repeated 2.5x, a sub-sampled
    assert mixing_plan([120, 30], [1.0, 1.0]) == [[0.625], [1.0, 1.0, 0.5]]
    assert mixing_plan([120, 30], [4.0, 1.0]) == [[1.0], [1.0]]
    rows = list(select_rows([(a, 1.0), (b, 1.0)], "train", seed=0, columns=["id", "dataset"]).iter_rows())
    count = Counter(r["dataset"] for r in rows)
    assert 60 <= count["a"] <= 90 and 60 <= count["b"] <= 90  # ~50 % each instead of 80 / 20
    b_rows = Counter((r["id"], r["repeat"]) for r in rows if r["dataset"] == "b")
    assert max(b_rows.values()) == 1  # a repeated row is a distinct copy (its own `repeat` index) ...
    assert {rep for _, rep in b_rows} == {0, 1, 2}  # ... of the 2.5 copies
    assert sum(rep < 2 for _, rep in b_rows) == 60  # two full copies of b's 30 rows


def test_only_manifest_listed_shards_are_read(tmp_path):
    src = write_shards(tmp_path, "m", 20, rows_per_shard=10, images=False)
    stray = [_row("m", "train", 999, b"x", [], [])]
    pq.write_table(
        pa.Table.from_pylist(stray), tmp_path / "train" / "part-99999.parquet"
    )  # not in the manifest
    ids = _ids(select_rows([(src, 1.0)], "train", seed=0, columns=["id"]))
    assert len(ids) == 20 and "m/train/999" not in ids


def test_eval_dataset_keeps_id_scale_and_ground_truth(synth):
    ds = eval_dataset(synth, "train", MODEL, long_side=256, short_side=64)
    rows = [dict(zip(b, vals, strict=True)) for b in _batches(ds) for vals in zip(*b.values(), strict=True)]
    assert len(rows) == 6
    original = {r["id"]: r for r in pq.read_table(Path(synth) / "train").to_pylist()}
    for r in rows:
        # 128x96 with (256, 64): factor min(256/128, 64/96) = 2/3 -> 85x64, scale back = (128/85, 96/64);
        # padded only to multiples of 32 (96x64), not to a shared canvas (issue #15)
        assert r["image"].shape == (3, 64, 96) and r["image"].dtype == np.float32
        np.testing.assert_allclose(r["scale"], [128 / 85, 96 / 64])
        polys, ignore = parse_gt(r["gt_polygons"], r["gt_ignore"])
        src = original[r["id"]]
        assert ignore == src["ignore"]
        assert [p.reshape(-1).tolist() for p in polys] == src["polygons"]


def test_object_store_budget_caps_the_stream_and_survives_train_ingest(synth):
    """The budget reaches the dataset's own execution options and the options Ray Train gives the shards."""
    from pipelines.config import ExperimentConfig
    from pipelines.train import ingest_config

    ds = train_dataset([(synth, 1.0)], "train", MODEL, AUG, seed=0, object_store_budget_gib=0.5)
    assert ds.context.execution_options.resource_limits.object_store_memory == 0.5 * 2**30
    assert sum(len(b["image"]) for b in _batches(ds)) == 6  # a small budget still streams every row
    cfg = ExperimentConfig.model_validate({"model": {"preset": "tiny"}, "data": {"object_store_budget_gib": 0.25}})
    options = ingest_config(cfg)._resolve_execution_options("train")
    assert options.resource_limits.object_store_memory == 0.25 * 2**30
    unbounded = ExperimentConfig.model_validate({"model": {"preset": "tiny"}, "data": {"object_store_budget_gib": None}})
    assert ingest_config(unbounded)._resolve_execution_options("train").resource_limits.object_store_memory != 0.25 * 2**30


def test_each_shard_is_read_and_augmented_in_one_task(tmp_path):
    """No separate read operator: it would run ahead of the augmentation and queue raw images in the object
    store, so memory would grow with the dataset (benchmarks/scale_ingest.py). Two sources: fused per source."""
    a = write_shards(tmp_path / "a", "a", 6, rows_per_shard=3)
    b = write_shards(tmp_path / "b", "b", 4, rows_per_shard=2)
    ds = train_dataset([(a, 1.0), (b, 1.0)], "train", MODEL, AUG, seed=0, batch_size=2)
    selected = select_rows([(a, 1.0), (b, 1.0)], "train", seed=0, columns=["id"]).count()  # not fused
    assert sum(len(batch["image"]) for batch in _batches(ds)) == selected
    stats = ds.stats()
    fused = "ReadParquet->MapBatches(_select)->MapBatches(_encode_block_ray)"
    assert f"{fused}: 2 tasks executed" in stats, stats  # one task per shard (Ray reports the first source)
    assert f"Operator 2 {fused}" in stats, stats  # the second source's read is fused too
    assert "ReadParquet:" not in stats and "SplitBlocks" not in stats, stats
    assert ds.context.target_max_block_size == TRAIN_BLOCK_MIB * 2**20
