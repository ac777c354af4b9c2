"""`tcm` answers at once: help for any command imports none of torch, Ray, open_clip or MLflow (behaviour, not
timing: `python -X importtime` and `sys.modules` say what was imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from pipelines.cli import LAZY_COMMANDS, app

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "ray", "open_clip", "mlflow")


def _python(code: str, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_importing_the_cli_imports_no_heavy_package() -> None:
    out = _python("import pipelines.cli", "-X", "importtime")
    assert out.returncode == 0, out.stderr
    # lines "import time: self | cumulative | <indent>name"
    imported = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "pipelines.cli" in imported and "typer" in imported  # the parse reads real records
    assert not {m for m in imported if m.split(".")[0] in HEAVY}, sorted(m for m in imported if m.split(".")[0] in HEAVY)


def test_help_of_every_command_imports_no_heavy_package() -> None:
    """`tcm --help`, then each command's own --help (which does import its stage module) in one process."""
    code = f"""
import json, sys
from typer.testing import CliRunner
from pipelines.cli import LAZY_COMMANDS, app
report = {{}}
for args in [["--help"], *[[name, "--help"] for name in LAZY_COMMANDS], ["pipeline", "run", "--help"]]:
    result = CliRunner().invoke(app, args)
    report[" ".join(args)] = [result.exit_code, sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})]
print(json.dumps(report))
"""
    out = _python(code)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(report) == len(LAZY_COMMANDS) + 2
    for args, (code_, heavy) in report.items():
        assert code_ == 0 and heavy == [], (args, code_, heavy)


def test_lazy_commands_list_their_docstrings_and_resolve_to_the_real_commands() -> None:
    listing = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert listing.exit_code == 0
    for name in (*LAZY_COMMANDS, "synth", "ingest", "pipeline"):
        assert f" {name} " in listing.output, name
    assert "Score predictions against ground truth" in listing.output  # score's docstring, read with ast
    train = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    assert train.exit_code == 0 and "--config" in train.output and "--no-register" in train.output
    missing = CliRunner().invoke(app, ["train"])  # the real command: its required option is enforced
    assert missing.exit_code == 2 and "--config" in missing.output


def test_synth_recognition_style_reaches_the_word_writer(tmp_path) -> None:
    """`tcm synth --task recognition --style clean` writes the clean set (one image shape); a bad style is named."""
    from PIL import Image

    ok = CliRunner().invoke(app, ["synth", "--task", "recognition", "--format", "icdar2015-words", "--style", "clean",
                                  "--out", str(tmp_path / "clean"), "--n", "6"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    shapes = {Image.open(p).size for p in (tmp_path / "clean" / "train").glob("*.png")}
    assert len(shapes) == 1, shapes  # the clean style draws every word on one fixed canvas
    bad = CliRunner().invoke(app, ["synth", "--task", "recognition", "--format", "lmdb", "--style", "fancy",
                                   "--out", str(tmp_path / "bad"), "--n", "2"])  # fmt: skip
    assert bad.exit_code == 1 and "fancy" in bad.output
