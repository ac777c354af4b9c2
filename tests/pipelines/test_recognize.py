"""`tcm recognize`: a recogniser checkpoint over a folder of crops -> the 4.3 form with confidences, equal to
the model's own decoding; a detector or an unreadable crop is a clear error."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from pipelines.checkpoint import save_checkpoint
from pipelines.cli import app
from tcm.build import build_detector
from tcm.config import DetectorConfig
from tcm.data.formats.words43 import parse
from tcm.recognition.build import build_recognizer
from tcm.recognition.config import RecognizerConfig
from tcm.recognition.preprocess import preprocess


def test_recognize_writes_the_models_predictions_with_confidences(tmp_path):
    cfg = RecognizerConfig.tiny()
    torch.manual_seed(0)
    model = build_recognizer(cfg, pretrained=False).eval()
    save_checkpoint(tmp_path / "ckpt", model, cfg)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (20 + 4 * i, 60 + 9 * i, 3), dtype=np.uint8) for i in range(3)]
    (tmp_path / "crops").mkdir()
    for i, crop in enumerate(crops):
        Image.fromarray(crop).save(tmp_path / "crops" / f"word_{i + 1}.png")
    res = CliRunner().invoke(app, ["recognize", "--model", str(tmp_path / "ckpt"), "--images", str(tmp_path / "crops"),
                                   "--out", str(tmp_path / "pred.txt"), "--batch-size", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    got = parse((tmp_path / "pred.txt").read_bytes(), "pred.txt")
    with torch.inference_mode():
        texts, confs = model.tokenizer.decode(model(preprocess(crops, cfg))["logits"])
    assert [w.name for w in got] == ["word_1.png", "word_2.png", "word_3.png"]
    assert [w.text for w in got] == texts
    # a random model: ~1/95 per step over 26 steps, so the products are ~0 (the file keeps 4 decimals)
    assert np.allclose([w.confidence for w in got], confs, atol=1e-4) and all(0 <= c <= 1 for c in confs)

    save_checkpoint(tmp_path / "det", build_detector(DetectorConfig.tiny(), pretrained=False), DetectorConfig.tiny())
    bad = CliRunner().invoke(app, ["recognize", "--model", str(tmp_path / "det"), "--images", str(tmp_path / "crops")])
    assert bad.exit_code == 1 and "a detector, not a recogniser" in bad.output
    (tmp_path / "crops" / "word_9.png").write_bytes(b"not a png")
    broken = CliRunner().invoke(app, ["recognize", "--model", str(tmp_path / "ckpt"), "--images", str(tmp_path / "crops")])
    assert broken.exit_code == 1 and "word_9.png: not a readable image" in broken.output


def test_predict_with_a_recogniser_reads_each_image_as_a_word(tmp_path):
    """`tcm predict --model <recogniser>`: the same readings as `tcm recognize` (the model's own decoding), in the
    4.3 form and as JSON."""
    cfg = RecognizerConfig.tiny()
    torch.manual_seed(1)
    model = build_recognizer(cfg, pretrained=False).eval()
    save_checkpoint(tmp_path / "ckpt", model, cfg)
    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 255, (24, 70 + 10 * i, 3), dtype=np.uint8) for i in range(2)]
    paths = []
    for i, crop in enumerate(crops):
        paths.append(tmp_path / f"word_{i + 1}.png")
        Image.fromarray(crop).save(paths[-1])
    res = CliRunner().invoke(app, ["predict", *map(str, paths), "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    with torch.inference_mode():
        texts, confs = model.tokenizer.decode(model(preprocess(crops, cfg))["logits"])
    got = parse((tmp_path / "out" / "predictions.txt").read_bytes(), "predictions.txt")
    assert [(w.name, w.text) for w in got] == [("word_1.png", texts[0]), ("word_2.png", texts[1])]
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [r["text"] for r in records] == texts and np.allclose([r["confidence"] for r in records], confs, atol=1e-5)
