"""README "On a cluster" shows exactly the command lines the stack tests run (modulo temporary paths and ids)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.infra import test_stack_integration as it
from tests.infra import test_worker_kill as kill

README = Path(__file__).resolve().parents[2] / "README.md"
ADDRESS = "$RAY_API_SERVER_ADDRESS"


def _section_commands(title: str) -> list[list[str]]:
    text = README.read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


def test_readme_cluster_commands_are_the_tested_ones():
    commands = _section_commands("On a cluster")
    expected = [
        ["make", "stack-up"],
        it.synth_argv("/tmp/synth/train", "train", 8, 1),
        it.ingest_argv("/tmp/synth/train", "train"),
        it.synth_argv("/tmp/synth/test", "test", 3, 2),
        it.ingest_argv("/tmp/synth/test", "test"),
        it.submit_argv(ADDRESS, "tiny-train-1"),
        it.retrain_argv("jobs/schedules/retrain.yaml"),
        ["make", "stack-down"],
        kill.ray_submit_argv(ADDRESS, "tiny-ft-1"),
    ]
    for argv in expected:
        assert argv in commands, f"README 'On a cluster' lacks:\n  {shlex.join(argv)}"
    kube = [c for c in commands if c[0] == "kubectl" and "-f" in c]
    manifests = {c[c.index("-f") + 1] for c in kube}
    assert manifests == {str(p.relative_to(README.parent)) for p in (README.parent / "infra" / "k8s").glob("*.yaml")}
    for c in kube:
        assert (README.parent / c[c.index("-f") + 1]).is_file()
