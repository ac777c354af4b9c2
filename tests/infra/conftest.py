"""The real local stack (`python -m infra.local.stack`), started once for the tests of this package.

Ray head + 2 worker nodes with token auth, moto S3 with the stack's buckets, an MLflow server: every command
the tests run goes through the same entry points a user types (`tcm submit`, `tcm retrain`, `ray job` API).
The stack is package-scoped, so it is stopped right after the last test here (not at the end of the whole
suite), and the teardown fails when `stack down` left any process behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the project's venv: `tcm`, `ray`, and the `python` job drivers run
# variables of the submitter's shell that must not leak into the stack's processes (another cluster, other keys)
DROPPED_ENV = re.compile(r"^(RAY_ADDRESS|RAY_API_SERVER_ADDRESS|MLFLOW_.*|AWS_.*|TCM_STACK_DIR)$")


@dataclass
class Stack:
    state_dir: Path
    env: dict[str, str]  # a shell with `source env.sh` done: what a user runs `tcm …` in
    state: dict = field(default_factory=dict)

    @property
    def dashboard(self) -> str:
        return self.state["dashboard_url"]

    def pids(self) -> dict[str, int]:
        return {p["name"]: p["pid"] for p in self.state["processes"]}

    def run(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """A command in the stack's environment from the repo root; stdout and stderr together in `.stdout`."""
        return subprocess.run(
            [str(a) for a in argv], cwd=REPO, env=self.env, text=True, timeout=timeout,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def cli(self, argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
        """A command line as a user types it (`tcm …`, `ray …`), with the venv's executable."""
        return self.run(BIN / argv[0], *argv[1:], timeout=timeout)

    def s3(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.env["AWS_ENDPOINT_URL_S3"], region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )  # fmt: skip

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """{key: size} of every object under the prefix (list_objects_v2, paginated)."""
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}

    def jobs(self):
        from ray.job_submission import JobSubmissionClient

        from infra.local.stack import ray_auth_headers

        return JobSubmissionClient(self.dashboard, headers=ray_auth_headers())

    def api(self, path: str) -> dict:
        """GET on the dashboard's HTTP API with the cluster token."""
        from infra.local.stack import ray_auth_headers

        with urllib.request.urlopen(urllib.request.Request(self.dashboard + path, headers=ray_auth_headers()), timeout=30) as r:
            return json.loads(r.read())

    def leftovers(self) -> list[str]:
        """Processes still alive that the stack started: a recorded pid, anything in a recorded pid's session or
        process group (Ray's workers start their own group in the node's session), or anything whose command
        line names the state dir (every Ray process: its session lives under STATE/ray; the MLflow store)."""
        recorded = set(self.pids().values())
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                pid = int(proc.name)
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                stat = (proc / "stat").read_text()
                if not cmdline or stat.rsplit(")", 1)[1].split()[0] == "Z":  # zombie: exited, not yet reaped
                    continue
                pgid, sid = (int(x) for x in stat.rsplit(")", 1)[1].split()[2:4])
            except (OSError, ValueError, IndexError):
                continue  # exited while we looked
            if pid in recorded or pgid in recorded or sid in recorded or str(self.state_dir) in cmdline:
                found.append(f"{pid} {cmdline[:160]}")
        return found


def _stack_cmd(action: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infra.local.stack", action], cwd=REPO, env=env, text=True, timeout=timeout,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _read_env_sh(path: Path, base: dict[str, str]) -> dict[str, str]:
    """env.sh's variables as `source` sets them (`$PATH` expanded against the shell's own)."""
    out = dict(line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines() if line)
    if "PATH" in out:
        out["PATH"] = out["PATH"].replace("$PATH", base.get("PATH", os.defpath))
    return out


@pytest.fixture(scope="package")
def stack():
    # short on purpose: Ray puts its unix sockets under STATE/ray and socket paths are limited to 107 bytes
    state_dir = Path(tempfile.mkdtemp(prefix="tcms-", dir="/tmp"))
    base = {k: v for k, v in os.environ.items() if not DROPPED_ENV.match(k)}
    base |= {"TCM_STACK_DIR": str(state_dir), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}
    try:
        up = _stack_cmd("up", base, timeout=600)  # a loaded machine can take minutes to register three Ray nodes
    except subprocess.TimeoutExpired as err:  # `up` was killed, what it started was not: stop that too
        _stack_cmd("down", base, timeout=300)
        pytest.fail(f"stack up did not finish within {err.timeout:.0f} s:\n{(err.output or b'').decode()[-3000:]}")
    stack = Stack(state_dir, dict(base))
    if (state_dir / "stack.json").exists():
        stack.state = json.loads((state_dir / "stack.json").read_text())
    if up.returncode != 0:
        _stack_cmd("down", base, timeout=120)
        pytest.fail(f"stack up failed ({up.returncode}):\n{up.stdout[-3000:]}")
    stack.env |= _read_env_sh(state_dir / "env.sh", base)
    try:
        yield stack
    finally:
        down = _stack_cmd("down", base, timeout=180)
        deadline = time.monotonic() + 30  # a SIGKILLed raylet's workers notice and exit within seconds
        while (left := stack.leftovers()) and time.monotonic() < deadline:
            time.sleep(1)
        if not left:
            shutil.rmtree(state_dir, ignore_errors=True)
        assert down.returncode == 0, f"stack down failed:\n{down.stdout[-2000:]}"
        assert not left, "stack down left processes behind:\n" + "\n".join(left)
        assert not (state_dir / "stack.json").exists()
