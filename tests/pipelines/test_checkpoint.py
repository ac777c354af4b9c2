"""Checkpoint folders: plain state dicts read with weights_only, and mismatches named by config field."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

from pipelines.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    config_diff,
    load_checkpoint,
    load_model_state,
    read_checkpoint,
    save_checkpoint,
)
from tcm.build import build_detector
from tcm.config import DetectorConfig


@pytest.fixture(scope="module")
def tiny() -> tuple[DetectorConfig, torch.nn.Module]:
    torch.manual_seed(0)
    cfg = DetectorConfig.tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no CLIP weights" is expected here
        return cfg, build_detector(cfg, pretrained=False)


def _build(cfg: DetectorConfig) -> torch.nn.Module:
    return build_detector(cfg, pretrained=False)


def test_round_trip_restores_weights_optimizer_and_meta(tmp_path, tiny):
    cfg, model = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 3, 64, 64))["prob_logits"].mean().backward()
    opt.step()  # optimiser state with moments
    save_checkpoint(tmp_path, model, cfg, meta={"epoch": 3, "mlflow_run_id": "abc"}, experiment={"name": "x"}, optimizer=opt)
    ckpt = load_checkpoint(str(tmp_path), with_train_state=True)
    assert ckpt.epoch == 3 and ckpt.meta["mlflow_run_id"] == "abc" and ckpt.experiment == {"name": "x"}
    assert ckpt.detector == cfg
    fresh = _build(cfg)
    load_model_state(fresh, ckpt, cfg)
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt.train_state["optimizer"])
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_different_prompt_count_names_the_field_not_a_shape(tmp_path, tiny):
    cfg, model = tiny
    save_checkpoint(tmp_path, model, cfg)
    other = dataclasses.replace(cfg, tcm=dataclasses.replace(cfg.tcm, num_prompts=cfg.tcm.num_prompts + 14))
    with pytest.raises(CheckpointMismatch) as err:
        load_model_state(_build(other), read_checkpoint(tmp_path), other)
    message = str(err.value)
    assert "model.tcm.num_prompts: checkpoint 4, config 18" in message
    assert str(tmp_path) in message


def test_different_head_kind_is_named(tmp_path, tiny):
    from tcm.config import PANHeadConfig

    cfg, model = tiny
    save_checkpoint(tmp_path, model, cfg)
    other = cfg.with_head(PANHeadConfig(neck_channels=32))
    with pytest.raises(CheckpointMismatch, match=r"model\.head\.kind: checkpoint 'db', config 'pan'"):
        load_model_state(_build(other), read_checkpoint(tmp_path), other)


def test_post_processing_differences_only_warn(tmp_path, tiny):
    cfg, model = tiny
    save_checkpoint(tmp_path, model, cfg)
    other = cfg.with_head(dataclasses.replace(cfg.head, box_thresh=0.6))
    assert config_diff(cfg, other) == [("model.head.box_thresh", cfg.head.box_thresh, 0.6)]
    fresh = _build(other)
    with pytest.warns(UserWarning, match=r"model\.head\.box_thresh"):
        load_model_state(fresh, read_checkpoint(tmp_path), other)
    assert torch.equal(next(iter(fresh.state_dict().values())), next(iter(model.state_dict().values())))


class NotATensor:
    pass


@pytest.mark.parametrize("hostile", ["model.pt", "train_state.pt"])
def test_pickled_code_is_refused(tmp_path, tiny, hostile):
    cfg, model = tiny
    save_checkpoint(tmp_path, model, cfg, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    torch.save({"weight": NotATensor()}, tmp_path / hostile)  # what a hostile checkpoint would carry
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_checkpoint(tmp_path)


def test_not_a_checkpoint_folder(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"epoch": 1}))
    with pytest.raises(CheckpointError, match="model.pt missing"):
        read_checkpoint(tmp_path)
