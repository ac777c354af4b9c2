"""Fault tolerance on the real stack: the Ray worker node running the training worker is killed mid-run; Ray
Train restarts the worker on the other node from the last checkpoint in the bucket and the job succeeds."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = "jobs/configs/tiny_cpu.yaml"
SHARDS = "s3://tcm-data/shards/synth-ft"
EPOCHS = 6
EXPERIMENT = "worker-kill"  # not tiny_cpu.yaml's default "tcm": the README walkthrough logs there on the same stack
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def ray_submit_argv(address: str, job_id: str) -> list[str]:
    """Plain `ray job submit` (README "On a cluster"): the stack's nodes carry the S3 and MLflow variables, as the
    KubeRay manifests' do, so no runtime env beyond the working dir is needed."""
    return [
        "ray", "job", "submit", "--address", address, "--working-dir", ".", "--submission-id", job_id, "--no-wait",
        "--", "python", "-m", "jobs.train", "--config", TINY,
        "--set", f"data.train=[{{uri: {SHARDS}}}]",
        "--set", "train.storage_path=s3://tcm-runs/ft",
        "--set", f"train.epochs={EPOCHS}",
        "--set", "train.steps_per_epoch=2",
        "--set", "data.batch_size=2",
        "--set", "train.max_failures=2",  # worker failures retried from the last checkpoint (every epoch in tiny_cpu)
        "--set", "train.num_workers=1",
        "--set", "train.cpus_per_worker=1.5",  # more than the head's 1 CPU: the worker runs on worker-1 or -2
        "--set", "mlflow.registered_model=null",
        "--set", f"mlflow.experiment={EXPERIMENT}",  # its own: the package's stack is shared with the walkthrough
    ]  # fmt: skip


def _status(stack, job_id: str) -> str:
    return str(stack.jobs().get_job_status(job_id)).split(".")[-1]


def _wait_for_checkpoint(stack, job_id: str, key: str, timeout: float = 420) -> int:
    """Epoch of the first checkpoint Ray Train has registered (its snapshot in the bucket names it)."""
    s3, deadline = stack.s3(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            snapshot = json.loads(s3.get_object(Bucket="tcm-runs", Key=key)["Body"].read())
            names = [c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]]
            if names:
                return int(names[-1].split("=")[-1])
        except s3.exceptions.NoSuchKey:
            pass
        status = _status(stack, job_id)
        assert status not in TERMINAL, f"job {job_id} ended {status} before its first checkpoint:\n" + stack.jobs().get_job_logs(job_id)[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint within {timeout:.0f} s")


def test_training_survives_losing_its_worker_node(stack, tmp_path):
    from mlflow import MlflowClient

    stack_pids = stack.pids()
    workers = {pid: name for name, pid in stack_pids.items() if name.startswith("ray-worker-")}
    assert len(workers) == 2

    src = tmp_path / "src"
    assert stack.cli(["tcm", "synth", "--format", "icdar2015", "--out", str(src), "--n", "6", "--seed", "3",
                      "--size", "128"]).returncode == 0  # fmt: skip
    ingest = stack.cli(["tcm", "ingest", "--format", "icdar2015", "--src", str(src), "--dst", SHARDS, "--split", "train"])
    assert ingest.returncode == 0, ingest.stdout[-3000:]

    job_id = f"tiny-ft-{uuid.uuid4().hex[:8]}"
    submit = stack.cli(ray_submit_argv(stack.dashboard, job_id))
    assert submit.returncode == 0 and job_id in submit.stdout, submit.stdout[-3000:]

    try:
        first = _wait_for_checkpoint(stack, job_id, "ft/tiny-cpu/checkpoint_manager_snapshot.json")
        assert first < EPOCHS

        # the node of the training worker: Ray's workers run in the session of their node's `ray start`
        actors = stack.api("/api/v0/actors?filter_keys=class_name&filter_predicates=%3D&filter_values=RayTrainWorker")
        alive = [a for a in actors["data"]["result"]["result"] if a["state"] == "ALIVE"]
        assert len(alive) == 1, alive
        node_pid = os.getsid(alive[0]["pid"])
        assert node_pid in workers, f"training worker runs in session {node_pid}, not a worker node {workers}"
        os.killpg(node_pid, signal.SIGKILL)  # the whole node at once: raylet, agents, its workers lose their raylet
        killed = workers[node_pid]

        deadline = time.monotonic() + 480
        while (status := _status(stack, job_id)) not in TERMINAL and time.monotonic() < deadline:
            time.sleep(2)
    finally:
        if _status(stack, job_id) not in TERMINAL:
            stack.jobs().stop_job(job_id)
    logs = stack.jobs().get_job_logs(job_id)
    assert status == "SUCCEEDED", f"{killed} killed; job {status}:\n{logs[-4000:]}"

    resumed = {int(n) for n in re.findall(r"resumed from checkpoint at epoch (\d+)", logs)}
    assert resumed and all(first <= n < EPOCHS for n in resumed), f"no resume after killing {killed}:\n{logs[-4000:]}"
    assert f"epoch {EPOCHS}/{EPOCHS}" in logs

    nodes = stack.api("/api/v0/nodes")["data"]["result"]["result"]
    dead = [n for n in nodes if n["state"] == "DEAD"]
    assert len(dead) == 1 and killed.removeprefix("ray-") in dead[0]["resources_total"]

    client = MlflowClient(stack.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])  # the restarted worker logged into the same run
    assert run.info.status == "FINISHED" and run.data.metrics["epoch"] == EPOCHS
    assert int(run.data.tags["tcm.resumed_from_epoch"]) in resumed
