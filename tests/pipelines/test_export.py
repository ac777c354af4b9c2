"""`tcm export`: config + checkpoint -> ONNX whose outputs match PyTorch; a wrong checkpoint is a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from pipelines.checkpoint import save_checkpoint
from pipelines.cli import app
from pipelines.config import load_config
from tcm.build import build_detector

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny_cpu.yaml"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_export_matches_pytorch(tmp_path):
    cfg = load_config(TINY).detector()
    torch.manual_seed(0)
    model = build_detector(cfg, pretrained=False).eval()
    save_checkpoint(tmp_path / "ckpt", model, cfg)
    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(app, ["export", "--config", str(TINY), "--weights", str(tmp_path / "ckpt"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = torch.randn(2, 3, cfg.input_size, cfg.input_size)
    with torch.no_grad():
        expected = model(images)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images.numpy()}), strict=True))
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert np.abs(got[key] - value.numpy()).max() <= 1e-4, key


def test_checkpoint_of_another_model_is_named(tmp_path):
    cfg = load_config(TINY).detector()
    other = load_config(TINY).with_overrides({"model.tcm.num_prompts": 18}).detector()
    save_checkpoint(tmp_path / "ckpt", build_detector(other, pretrained=False), other)
    result = CliRunner().invoke(
        app, ["export", "--config", str(TINY), "--weights", str(tmp_path / "ckpt"), "--out", str(tmp_path / "m.onnx")]
    )
    assert result.exit_code == 1
    assert "num_prompts" in result.output and "Traceback" not in result.output
    assert cfg.tcm.num_prompts == 4
