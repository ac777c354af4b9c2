"""`tcm export`: config + checkpoint -> ONNX whose outputs match PyTorch (a detector's graph; a recogniser's two
graphs through OnnxRecognizer); a wrong checkpoint or option is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipelines.checkpoint import save_checkpoint
from pipelines.cli import app
from pipelines.config import load_config, model_config_from_dict
from tcm.build import build_detector
from tcm.recognition.build import build_recognizer
from tcm.recognition.onnx_runtime import OnnxRecognizer

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny_cpu.yaml"
REC_TINY = REPO / "jobs" / "configs" / "clip4str_tiny_cpu.yaml"


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
    sidecar = json.loads((tmp_path / "model.json").read_text())  # beside the graph: what tcm spot's ORT runtime reads
    assert model_config_from_dict(sidecar["model"]) == cfg
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = torch.randn(2, 3, cfg.input_size, cfg.input_size)
    with torch.no_grad():
        expected = model(images)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images.numpy()}), strict=True))
    assert list(got) == sidecar["outputs"] and set(got) == set(expected)
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


@pytest.mark.slow  # the recogniser's AR graphs trace 2 x 8 decoder steps: ~10-25 s on 2 shared cores
def test_recognizer_export_matches_pytorch(tmp_path):
    config = yaml.safe_load(REC_TINY.read_text())
    config["model"]["recognizer"]["max_label_length"] = 7  # 8 AR steps per branch: a third of the export time
    (tmp_path / "rec.yaml").write_text(yaml.safe_dump(config))
    cfg = load_config(tmp_path / "rec.yaml").tcm_config()
    torch.manual_seed(0)
    model = build_recognizer(cfg, pretrained=False).eval()
    save_checkpoint(tmp_path / "ckpt", model, cfg)
    out = tmp_path / "rec"
    args = ["export", "--config", str(tmp_path / "rec.yaml"), "--weights", str(tmp_path / "ckpt"), "--out", str(out)]
    bad = CliRunner().invoke(app, [*args, "--size", "64"])
    assert bad.exit_code == 1 and "--size is the detector's" in bad.output and not out.exists()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "visual.onnx, cross.onnx, recognizer.json" in result.output
    rec = OnnxRecognizer(out, threads=1)
    assert rec.cfg == cfg  # the 36-char charset of the config travels with the graphs
    images = torch.randn(3, 3, *cfg.image_size)
    with torch.no_grad():
        expected = model(images, early_stop=False)  # the graphs' fixed 8 steps
    got = rec.logits(images.numpy())
    for key, value in expected.items():
        assert np.abs(got[key] - value.numpy()).max() <= 1e-4, key
    assert rec(images)[0] == model.tokenizer.decode(expected["logits"])[0]
