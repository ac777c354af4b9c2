"""The task interface without Ray: which task a config gets, the recognition encoder, loss through the DDP
module, scores derived by hand, checkpoints of a recogniser, the recognition sweep and the OneCycle schedule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.checkpoint import load_model_state, read_checkpoint, save_checkpoint
from pipelines.config import ConfigError, ExperimentConfig, load_config
from pipelines.tasks import task_for
from pipelines.tasks.detection import DetectionTask
from pipelines.tasks.recognition import (
    RecognitionTask,
    accuracy_table,
    token_batch,
    trial_overrides,
    word_scores,
)
from pipelines.train import onecycle_lr
from tcm.recognition.charset import CHARSET_36
from tcm.recognition.config import RecognizerConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "jobs" / "configs"


def test_each_config_gets_its_task_and_recognition_defaults():
    det, rec = load_config(CONFIGS / "tiny_cpu.yaml"), load_config(CONFIGS / "clip4str_tiny_cpu.yaml")
    assert isinstance(task_for(det.tcm_config()), DetectionTask) and det.mlflow.registered_model == "tcm-detector"
    assert isinstance(task_for(rec.tcm_config()), RecognitionTask) and rec.mlflow.registered_model == "tcm-recognizer"
    assert rec.tcm_config() == RecognizerConfig.tiny(charset=CHARSET_36, decoder_lr_factor=1.0, perm_num=2, decoder_dropout=0.0)
    assert rec.data.word_augment.image_size == (32, 128)  # follows the recogniser's input
    b16 = load_config(CONFIGS / "clip4str_b16.yaml")
    assert b16.tcm_config() == RecognizerConfig() and b16.optim.betas == (0.9, 0.98) and b16.optim.eps == 1e-6
    assert b16.data.batch_size * b16.train.num_workers == 1024 and b16.optim.schedule == "onecycle"
    with pytest.raises(ConfigError, match="this step needs a detector"):
        rec.detector()


def test_recognizer_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  kind: recognizer\n  recognizer:\n    perm_nu: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:4: model.recognizer.perm_nu: unknown key"):
        load_config(bad)
    with pytest.raises(ConfigError, match="word_augment.image_size"):
        load_config(bad, ["model.recognizer={}", "data.word_augment.image_size=[32, 128]"])


def test_token_batch_pads_to_a_fixed_width_and_drops_what_preprocessing_drops():
    images = np.arange(4 * 3 * 2 * 2, dtype=np.float32).reshape(4, 3, 2, 2)
    out = token_batch({"image": images, "label": np.array(["Ab", "", "x" * 26, "9"], dtype=object)},
                      charset=CHARSET_36, max_length=25)  # fmt: skip
    tok_bos, tok_eos, tok_pad = 37, 0, 38  # [E] charset [B] [P] for 36 characters
    assert out["tokens"].shape == (2, 27) and out["tokens"].dtype == np.int64
    assert out["tokens"][0, :4].tolist() == [tok_bos, 11, 12, tok_eos]  # "ab": a = 1 + 10, b = 1 + 11
    assert out["tokens"][1, :3].tolist() == [tok_bos, 10, tok_eos] and (out["tokens"][1, 3:] == tok_pad).all()
    assert np.array_equal(out["image"], images[[0, 3]])  # the empty and the 26-character words left the batch


def test_word_scores_by_hand():
    # "Hello!" vs "hello": equal after the 36-char adapter; "wor" vs "word": 1 edit / 4; "" vs "ab": 2 / 2
    s = word_scores([("Hello!", "hello"), ("wor", "word"), ("", "ab")])
    assert s["accuracy"] == pytest.approx(1 / 3) and s["one_minus_ned"] == pytest.approx(1 - (0 + 0.25 + 1) / 3)
    rows = [{"id": "1", "dataset": "a", "pred": "x", "gt": "x"}, {"id": "2", "dataset": "b", "pred": "y", "gt": "z"},
            {"id": "3", "dataset": "b", "pred": "Z", "gt": "z"}, {"id": "4", "dataset": "b", "pred": "", "gt": "!"}]  # fmt: skip
    table = accuracy_table(rows)
    assert [r["dataset"] for r in table] == ["a", "b", "combined"]
    # "!" is empty after the 36-char preprocessing: dropped, not counted; "Z" is adapted to "z"
    assert table[-1]["accuracy"] == pytest.approx(2 / 3) and table[1]["words"] == 2  # weighted by words


def test_recognition_loss_goes_through_the_wrapped_module_and_equals_the_models_loss():
    cfg = ExperimentConfig.model_validate({"model": {"kind": "recognizer", "preset": "tiny"}})
    task = task_for(cfg.tcm_config())
    torch.manual_seed(0)
    model = task.build_model(cfg.tcm_config(), pretrained=False)
    model.eval()  # no dropout: the two computations must agree exactly
    batch = token_batch({"image": torch.randn(3, 3, 32, 128).numpy(), "label": np.array(["ab", "c", "xyz1"])},
                        charset=cfg.tcm_config().charset, max_length=25)  # fmt: skip
    tensors = {k: torch.as_tensor(v) for k, v in batch.items()}
    wrapped = task.train_module(model)
    assert {id(p) for p in wrapped.parameters()} == {id(p) for p in model.parameters()}
    torch.manual_seed(1)
    got = task.losses(wrapped, model, dict(tensors), torch.autocast("cpu", enabled=False))
    torch.manual_seed(1)
    want = model.loss(tensors["image"], ["ab", "c", "xyz1"])
    assert set(got) == set(want) and torch.allclose(got["loss"], want["loss"])
    got["loss"].backward()
    assert model.visual_decoder.pos_queries.grad is not None
    groups = task.param_groups(model, cfg)
    assert {g["name"] for g in groups} >= {"encoder/decay", "decoder/decay"}


def test_recognizer_checkpoint_round_trip_and_mismatch_names_the_field(tmp_path):
    rec = RecognizerConfig.tiny()
    task = task_for(rec)
    model = task.build_model(rec, pretrained=False)
    save_checkpoint(tmp_path / "c", model, rec, meta={"epoch": 1})
    ckpt = read_checkpoint(tmp_path / "c")
    assert ckpt.detector == rec
    again = task.build_model(rec, pretrained=False)
    load_model_state(again, ckpt, rec)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    wider = RecognizerConfig.tiny(embed_dim=128)
    with pytest.raises(Exception, match="embed_dim: checkpoint 64, config 128"):
        load_model_state(task.build_model(wider, pretrained=False), ckpt, wider)


def test_recognition_sweep_sets_the_three_knobs():
    cfg = load_config(CONFIGS / "clip4str_tiny_cpu.yaml")
    params = {"text_freeze_layers": -1, "decoder_lr_factor": 19.0, "perm_num": 6, "lr": 2e-3}
    rec = cfg.with_overrides(trial_overrides(params)).tcm_config()
    assert (rec.text_freeze_layers, rec.decoder_lr_factor, rec.perm_num) == (-1, 19.0, 6)


def test_onecycle_warms_up_then_anneals_like_torch():
    cfg = load_config(CONFIGS / "clip4str_b16.yaml", ["optim.lr=1.0", "optim.warmup_fraction=0.25"])
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=101, pct_start=0.25, cycle_momentum=False)
    want = []
    for _ in range(100):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    got = [onecycle_lr(cfg, i / 100) for i in range(100)]
    assert got[0] == pytest.approx(1 / 25) and max(got) == pytest.approx(1.0)
    # torch ends the warm-up at step pct * total - 1 (24.25 of 100 here), this at 25: the curves differ by < 5%
    assert np.allclose(got, want, atol=0.05) and int(np.argmax(got)) - int(np.argmax(want)) in (0, 1) and math.isclose(onecycle_lr(cfg, 1.0), 1 / 25 / 1e4)
