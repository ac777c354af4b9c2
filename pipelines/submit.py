"""`tcm submit`: run one of the job entrypoints on any Ray cluster through the Job Submission API.

The working directory travels as the job's `working_dir` (Ray honours .gitignore, so .venv and outputs stay
home); the entrypoint is `python -m jobs.<job> --config <config>`; logs are streamed until the job ends and
the job's own outcome becomes the exit status.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from pathlib import Path

import typer

JOBS = ("train", "tune", "evaluate", "retrain", "pipeline", "cross_eval")
TERMINAL = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 2}
# what the driver of a job needs from the submitter's environment: where S3 and MLflow are. Credentials are NOT
# forwarded: Ray records a job's runtime_env in its logs and dashboard, so keys travel only through the cluster's
# own environment (node env, Kubernetes secret, IAM role) -- as the local stack and infra/k8s set them
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL")


def entrypoint(job: str, config: str, extra: list[str] | None = None) -> str:
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}; choose one of {', '.join(JOBS)}")
    return " ".join(["python", "-m", f"jobs.{job}", "--config", config, *(extra or [])])


def submit(address: str, job: str, config: str, working_dir: str = ".", wait: bool = True,
           submission_id: str | None = None, extra: list[str] | None = None, echo=print) -> int:  # fmt: skip
    """Submit, stream the logs, return 0 on SUCCEEDED (1 FAILED, 2 STOPPED)."""
    from ray.job_submission import JobSubmissionClient

    if not Path(working_dir, config).is_file():
        raise FileNotFoundError(f"{config}: no such config under the working directory {working_dir}")
    client = JobSubmissionClient(address)
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    job_id = client.submit_job(
        entrypoint=entrypoint(job, config, extra),
        submission_id=submission_id,
        runtime_env={"working_dir": working_dir, "env_vars": env},
        metadata={"tcm_job": job, "config": config},
    )
    echo(f"submitted {job} as {job_id} to {address}")
    if not wait:
        return 0

    async def stream() -> None:
        async for chunk in client.tail_job_logs(job_id):
            echo(chunk.rstrip("\n"))

    asyncio.run(stream())
    while (status := str(client.get_job_status(job_id)).split(".")[-1]) not in TERMINAL:
        time.sleep(1)
    echo(f"job {job_id} {status}")
    return TERMINAL[status]


def submit_command(
    job: str = typer.Argument(..., help=f"Job to run: {', '.join(JOBS)} (the module jobs/<job>.py)."),
    address: str = typer.Option(
        os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
        "--address",
        help="Ray dashboard / job server address (default: $RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265).",
    ),
    config: str = typer.Option(..., "--config", help="Config YAML path, relative to the working directory."),
    working_dir: str = typer.Option(".", "--working-dir", help="Folder uploaded as the job's working_dir."),
    submission_id: str = typer.Option(None, "--submission-id", help="Stable id: re-submitting resumes the same run."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once submitted instead of streaming the logs."),
    set_: list[str] = typer.Option(
        [], "--set", help="key.sub=value override passed on to the job's config (repeatable)."
    ),
) -> None:
    """Submit a job to a Ray cluster through the Job Submission API, stream its logs, exit with its status."""
    try:
        extra = [arg for item in set_ for arg in ("--set", shlex.quote(item))]
        code = submit(address, job, config, working_dir, wait=not no_wait, submission_id=submission_id,
                      extra=extra, echo=typer.echo)  # fmt: skip
    except (ValueError, FileNotFoundError, ConnectionError, RuntimeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)
