"""The whole path on a real local stack: synthetic data into the bucket -> `tcm submit train` through the Job API
-> the run and its model in the MLflow server and the bucket (registered without `champion`: it learned nothing)
-> `tcm retrain` from new data in the bucket promotes `champion` only when the margin is met -> a run with nothing
new does nothing -> the production schedule, which asks for 8 GPUs, stops at once and leaves its batch resumable.
The package fixture then stops the stack and checks that no process is left behind.

Tiny TCM-DB on 128 px synthetic images, 1 epoch of 2 steps per training: the point is the plumbing.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCHEDULE = REPO / "jobs" / "schedules" / "retrain_local.yaml"
PRODUCTION = REPO / "jobs" / "schedules" / "retrain.yaml"
TINY = "jobs/configs/tiny_cpu.yaml"
MODEL = "tcm-detector"  # tiny_cpu.yaml registers under the default name; the retrain schedule decides about it
SHARDS = "s3://tcm-data/shards/ic15"  # the schedule's benchmark lives here (split test)
TINY_RUN = [  # a training that only proves the plumbing: 1 worker, 1 epoch of 2 steps of 2 images
    "train.epochs=1",
    "train.steps_per_epoch=2",
    "data.batch_size=2",
    "train.num_workers=1",
    "train.cpus_per_worker=1",
    "train.num_overlays=1",
]


# ------------------------------------------------------------------ the commands (as the README walkthrough types them)


def synth_argv(out: str, split: str, n: int, seed: int) -> list[str]:
    return ["tcm", "synth", "--format", "icdar2015", "--out", str(out), "--n", str(n), "--seed", str(seed),
            "--split", split, "--size", "128"]  # fmt: skip


def ingest_argv(src: str, split: str) -> list[str]:
    return ["tcm", "ingest", "--format", "icdar2015", "--src", str(src), "--dst", SHARDS, "--split", split]


def submit_argv(address: str, job_id: str) -> list[str]:
    return [
        "tcm", "submit", "train", "--address", address, "--config", TINY, "--submission-id", job_id,
        "--set", f"data.train=[{{uri: {SHARDS}}}]",
        "--set", f"data.val=[{{uri: {SHARDS}, split: test}}]",
        "--set", "train.storage_path=s3://tcm-runs/it",
        "--set", "mlflow.experiment=stack-it",
        *(a for s in TINY_RUN for a in ("--set", s)),
    ]  # fmt: skip


def retrain_argv(schedule: str) -> list[str]:
    return ["tcm", "retrain", "--config", str(schedule)]


# ------------------------------------------------------------------------------------------------------ the test


def _stage(started: float, name: str) -> None:
    print(f"{time.monotonic() - started:6.1f} s  {name}")  # shown on failure: where a slow run spent its time


def _ok(proc, what: str) -> str:
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{proc.stdout[-4000:]}"
    return proc.stdout


def _upload_raw(stack, src: Path, numbers: range, prefix: str) -> int:
    """New field data landing in the bucket: the synthetic IC15 pairs img_<n> / gt_img_<n> for n in `numbers`."""
    s3, count = stack.s3(), 0
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        if int(re.search(r"(\d+)\.\w+$", path.name).group(1)) in numbers:
            s3.upload_file(str(path), "tcm-data", f"{prefix}/{path.parent.name}/{path.name}")
            count += 1
    return count


def _schedule(tmp_path: Path, margin: float, storage: str) -> Path:
    """jobs/schedules/retrain_local.yaml as shipped (bucket layout, tiny model, floor 0), with another margin."""
    cfg = yaml.safe_load(SCHEDULE.read_text())
    cfg["set"] |= {"train.storage_path": storage, "mlflow.experiment": "stack-retrain"}
    cfg["margin"] = margin
    path = tmp_path / f"retrain-margin-{margin}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_submit_train_then_scheduled_retrain(stack, tmp_path):
    from mlflow import MlflowClient

    started = time.monotonic()
    schedule = yaml.safe_load(SCHEDULE.read_text())
    assert schedule["benchmark"] == {"uri": SHARDS, "split": "test"} and schedule["raw"] == "s3://tcm-data/raw/ic15"

    # ---- data: synthesised, ingested into the bucket (train split + the schedule's fixed benchmark)
    _stage(started, "data")
    for split, n, seed in (("train", 8, 1), ("test", 3, 2)):
        _ok(stack.cli(synth_argv(tmp_path / split, split, n, seed)), "tcm synth")
        _ok(stack.cli(ingest_argv(tmp_path / split, split)), "tcm ingest")
    assert "shards/ic15/manifest.json" in stack.keys("tcm-data", "shards/ic15/")

    # ---- a training job through the Job API, its outcome as our exit status
    _stage(started, "submit train")
    job_id = f"it-train-{uuid.uuid4().hex[:8]}"
    out = _ok(stack.cli(submit_argv(stack.dashboard, job_id)), "tcm submit train")
    assert f"job {job_id} SUCCEEDED" in out
    assert str(stack.jobs().get_job_status(job_id)).endswith("SUCCEEDED")

    # ---- MLflow server has the run; the model's files are objects in the bucket
    _stage(started, "mlflow + s3 checks")
    client = MlflowClient(stack.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("stack-it")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    run = runs[0]
    assert run.info.run_name == "tiny-cpu" and run.data.metrics["epoch"] == 1
    # two steps from random weights: registered, but below mlflow.promote_min_hmean, so not champion
    (first,) = client.search_model_versions(f"name='{MODEL}'")
    assert first.version == "1" and first.run_id == run.info.run_id
    assert run.data.metrics["val/hmean"] < 0.05 and "champion" not in client.get_registered_model(MODEL).aliases
    assert first.tags["tcm.promotion"].startswith("registered without alias 'champion': validation hmean 0.0")
    assert run.data.tags["tcm.promotion"] == first.tags["tcm.promotion"]
    assert "registered without alias 'champion'" in out  # the job log says why
    logged = client.get_logged_model(first.source.rsplit("/", 1)[-1])
    bucket, prefix = logged.artifact_location.removeprefix("s3://").split("/", 1)
    assert bucket == "tcm-runs"
    objects = stack.keys(bucket, prefix.rstrip("/") + "/")
    for name in ("MLmodel", "extra_files/model.pt", "extra_files/config.json"):
        assert objects.get(f"{prefix.rstrip('/')}/{name}", 0) > 0, f"{name} not in s3://{bucket}/{prefix}: {sorted(objects)}"
    assert any(k.startswith("it/tiny-cpu/checkpoint_epoch=0001/") for k in stack.keys("tcm-runs", "it/"))

    # ---- new data in the raw prefix -> retrain with a margin any outcome meets -> promoted to champion
    _stage(started, "retrain (margin -1)")
    _ok(stack.cli(synth_argv(tmp_path / "raw", "train", 8, 11)), "tcm synth")
    uploaded = _upload_raw(stack, tmp_path / "raw", range(1, 5), "raw/ic15/day1")
    out = _ok(stack.cli(retrain_argv(_schedule(tmp_path, -1.0, "s3://tcm-runs/retrain"))), "tcm retrain")
    assert f"{uploaded} new or changed files -> batch-0001" in out
    assert "batch-0001: version 2 promoted (first model, hmean" in out  # no champion before: the floor (0) decides
    assert client.get_model_version_by_alias(MODEL, "champion").version == "2"
    assert "challenger" not in client.get_registered_model(MODEL).aliases  # it became the champion
    assert client.get_model_version(MODEL, "2").tags["retrain_decision"].startswith("promoted")

    # ---- more data, but a margin no model can meet (hmean is at most 1) -> champion kept, new version challenger
    _stage(started, "retrain (margin 2)")
    uploaded = _upload_raw(stack, tmp_path / "raw", range(5, 9), "raw/ic15/day2")
    strict = _schedule(tmp_path, 2.0, "s3://tcm-runs/retrain")
    out = _ok(stack.cli(retrain_argv(strict)), "tcm retrain")
    assert f"{uploaded} new or changed files -> batch-0002" in out
    assert "batch-0002: version 3 not-promoted" in out and "champion v2 kept" in out
    aliases = client.get_registered_model(MODEL).aliases
    assert aliases["champion"] == "2" and aliases["challenger"] == "3"
    finetune = client.get_run(client.get_model_version(MODEL, "3").run_id)
    assert finetune.data.tags["data.train.0.uri"].endswith("/batch-0001")  # every batch so far, not just the new one
    assert finetune.data.tags["data.train.1.uri"].endswith("/batch-0002")
    assert client.get_model_version(MODEL, "3").tags["retrain_decision"].startswith("not-promoted")

    # ---- nothing new since: nothing is trained, registered or promoted, and it says so
    _stage(started, "retrain (nothing new)")
    out = _ok(stack.cli(retrain_argv(strict)), "tcm retrain")
    assert "nothing new in s3://tcm-data/raw/ic15 since the last run (16 files unchanged)" in out
    assert "fine-tuning" not in out
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 3
    assert client.get_registered_model(MODEL).aliases == aliases

    # ---- the production schedule (8 GPU workers) on a CPU-only stack: one line, exit 1, nothing waits for ever
    _stage(started, "production schedule")
    t0 = time.monotonic()
    proc = stack.cli(retrain_argv(PRODUCTION), timeout=300)
    took = time.monotonic() - t0
    print(f"production schedule stopped after {took:.0f} s")  # the acceptance figure (< 60 s), not asserted
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "16 new or changed files -> batch-0001" in proc.stdout
    line = next(x for x in proc.stdout.splitlines() if x.startswith("error: "))
    assert line == (
        "error: training 'ic15-db-retrain-0001' can never start: it asks for 8 worker(s) x {CPU: 1, GPU: 1} "
        "(8 CPU, 8 GPU in all, at most 0 worker(s) fit); the cluster has 3 node(s) with 5 CPU, 0 GPU and no "
        "autoscaler to add more"
    )
    assert "Requesting resources" not in proc.stdout
    state = json.loads(stack.s3().get_object(Bucket="tcm-data", Key="shards/ic15-retrain/retrain_state.json")["Body"].read())
    assert [b["stage"] for b in state["batches"]] == ["ingested"]  # resumable: the next run starts at the fine-tune
    production = client.get_experiment_by_name(load_config(REPO / "jobs" / "configs" / "ic15_db.yaml").mlflow.experiment)
    (failed,) = client.search_runs([production.experiment_id], "attributes.run_name = 'ic15-db-retrain-0001'")
    assert failed.info.status == "FAILED"
