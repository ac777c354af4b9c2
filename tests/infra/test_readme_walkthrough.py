"""The README runs as written: its ```sh blocks, verbatim and in order, in one bash shell, in a fresh clone.

A fresh clone is `git clone` of this checkout's committed HEAD into a temporary folder; it reuses the project's
`.venv` by symlink (its pyproject.toml is dated back so `make setup` finds the install up to date and installs
nothing). The walkthrough starts its own local stack (`make stack-up`, state in the clone) and stops it; whatever
happens, the test stops it again and fails when any process it started is left behind. Snippets that cannot run
here (KubeRay, another cluster, placeholders) are ```text blocks and are not run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.infra.conftest import DROPPED_ENV

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
MARK = "##walkthrough-block"
# ~8 min on an idle 2-core machine; several times that when the machine is shared (CI runners, other jobs)
TIMEOUT = 2400


def blocks(text: str, lang: str = "sh") -> list[str]:
    return [body for kind, body in FENCE.findall(text) if kind == lang]


def script(text: str) -> str:
    """One bash script of the README's sh blocks; each announces itself, so a failure names its block."""
    parts = ["set -eo pipefail"]
    for i, body in enumerate(blocks(text), start=1):
        parts += [f"echo '{MARK} {i}'", body.rstrip("\n")]
    parts.append(f"echo '{MARK} done'")
    return "\n".join(parts) + "\n"


def _leftovers(root: Path) -> list[str]:
    """Processes still alive whose command line or working folder is inside the clone (every stack process)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            if not cmdline or (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if str(root) in cmdline or cwd == str(root) or cwd.startswith(f"{root}/"):
            found.append(f"{proc.name} {cmdline[:160]}")
    return found


def fresh_clone() -> Path:
    # short on purpose: the stack's Ray sockets live under <clone>/infra/local/.state/ray (107-byte socket paths)
    root = Path(tempfile.mkdtemp(prefix="tcmw-", dir="/tmp"))
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(root)], check=True)
    (root / ".venv").symlink_to(REPO / ".venv")
    os.utime(root / "pyproject.toml", (0, 0))  # older than .venv/.installed: `make setup` has nothing to do
    return root


def run_walkthrough(root: Path, text: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run the script; its output goes to `<clone>.log` as it comes (a run that times out still shows where it was:
    returncode 124 and the output so far)."""
    env = {k: v for k, v in os.environ.items() if not DROPPED_ENV.match(k) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PYTHONPATH"] = str(root)  # the clone's code, not the checkout the shared .venv was installed from
    path = root.with_name(root.name + ".sh")  # beside the clone, not in it (`tcm submit` uploads the clone)
    log = root.with_name(root.name + ".log")
    path.write_text(script(text))
    try:
        with open(log, "w") as out:
            proc = subprocess.Popen(["bash", str(path)], cwd=root, env=env, text=True, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
                rc = 124
                proc.wait(timeout=60)
        return subprocess.CompletedProcess(proc.args, rc, log.read_text(errors="replace"))
    finally:
        path.unlink(missing_ok=True)


def failed_block(output: str) -> str:
    started = re.findall(rf"^{MARK} (\S+)$", output, re.M)
    return started[-1] if started else "before the first block"


def stop_everything(root: Path) -> list[str]:
    subprocess.run([sys.executable, "-m", "infra.local.stack", "down"], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=400)  # fmt: skip
    deadline = time.monotonic() + 30
    while (left := _leftovers(root)) and time.monotonic() < deadline:
        time.sleep(1)
    return left


# ------------------------------------------------------------------------------------------------ fast checks


def test_sh_blocks_are_the_walkthrough_and_the_rest_is_text():
    text = README.read_text()
    assert text.split("\n## ", 1)[0].count("```\nmake demo\nmake test\n```") == 1  # the two opening commands
    kinds = {kind for kind, _ in FENCE.findall(text)}
    assert kinds <= {"", "sh", "text", "yaml"}, kinds
    steps = "".join(blocks(text))
    assert "source .venv/bin/activate" in steps and "make stack-up" in steps
    for command in ("predict", "evaluate", "score", "export", "check-targets", "cross-eval", "retrain", "submit"):
        assert f"tcm {command} " in steps, f"no runnable example of `tcm {command}`"
    assert "--model models:/tcm-detector@champion" in steps
    assert steps.index("s3://tcm-data/raw/ic15") < steps.index("tcm retrain")  # raw data lands before retrain
    assert "/tmp/" not in steps  # one working folder in the clone: nothing collides with another walkthrough
    kube = [line for body in blocks(text, "text") for line in body.splitlines() if line.startswith("kubectl") and " -f " in line]
    manifests = {line.split(" -f ", 1)[1].split()[0] for line in kube}
    assert manifests == {str(p.relative_to(REPO)) for p in (REPO / "infra" / "k8s").glob("*.yaml")}


def test_work_folder_is_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", "-q", "work/x"], cwd=REPO)
    assert ignored.returncode == 0


# ------------------------------------------------------------------------------------------------ the walkthrough


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT + 600)  # the walkthrough's own limit, then stopping the stack
def test_readme_runs_as_written_in_a_fresh_clone():
    root = fresh_clone()
    try:
        proc = run_walkthrough(root, (root / "README.md").read_text())
        out = proc.stdout
        assert proc.returncode == 0, f"README block {failed_block(out)} failed ({proc.returncode}):\n{out[-6000:]}"
        assert f"{MARK} done" in out
        # what the README says each step shows
        assert re.search(r"job \S+ SUCCEEDED", out)
        assert "registered without alias 'champion'" in out  # the tiny submitted run stays below the floor
        assert re.search(r"batch-0001: version \d+ promoted", out)
        assert "nothing new in s3://tcm-data/raw/ic15 since the last run" in out
        assert "object(s) saved to" in out and "object(s) restored from" in out  # the buckets outlived the restart
        predictions = sorted(root.glob("work/predict*/predictions.json"))
        assert len(predictions) == 2, predictions  # before and after the restart, from models:/…@champion
        assert predictions[0].read_text() == predictions[1].read_text()
        assert (root / "work" / "tiny.onnx").stat().st_size > 0
    finally:
        left = stop_everything(root)
        if not left:
            shutil.rmtree(root, ignore_errors=True)
            root.with_name(root.name + ".log").unlink(missing_ok=True)
    assert not left, "the walkthrough left processes behind:\n" + "\n".join(left)
