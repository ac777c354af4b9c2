"""`tcm check-targets`: each head's targets decode back to the ground truth; a target bug shows up."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipelines.check_targets import check_targets
from pipelines.cli import app
from tcm.data.synth import write_dataset


@pytest.fixture(scope="module")
def curved(tmp_path_factory):
    root = tmp_path_factory.mktemp("tt")
    write_dataset("totaltext", root, n=10, seed=5, split="test", height=480, width=480)
    return str(root / "test")


@pytest.mark.parametrize(("head", "mode", "floor"), [("db", "poly", 0.95), ("pan", None, 0.95), ("fce", None, 0.9)])
def test_curved_synthetic_text_round_trips(curved, head, mode, floor):
    result = check_targets(head, "totaltext", curved, mode)
    assert result["images"] == 10
    assert result["hmean"] >= floor, result
    assert result["hmean_all"] <= result["hmean"]  # tiny text can only cost, never help


@pytest.mark.parametrize("head", ["db", "pan"])
def test_ic15_fixture_round_trips(ic15_fixture, head):
    result = check_targets(head, "icdar2015", str(ic15_fixture))
    assert result["images"] == 6 and result["hmean"] >= 0.95, result


def test_a_target_bug_is_caught(curved, monkeypatch):
    """Decoding at the wrong scale (a classic rescaling bug) must collapse the score."""
    from tcm.heads.db_codec import DBCodec

    original = DBCodec.decode
    monkeypatch.setattr(DBCodec, "decode", lambda self, outputs, scale=(1.0, 1.0): original(self, outputs, (0.5, 0.5)))
    assert check_targets("db", "totaltext", curved, "poly")["hmean"] < 0.2


def test_cli_json(curved):
    result = CliRunner().invoke(app, ["check-targets", "--head", "db", "--format", "totaltext", "--src", curved, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["hmean"] >= 0.9
    bad = CliRunner().invoke(app, ["check-targets", "--head", "xyz", "--format", "totaltext", "--src", curved])
    assert bad.exit_code == 1 and "xyz" in bad.output
