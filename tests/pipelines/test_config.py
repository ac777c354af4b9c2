"""Experiment YAML: strict validation with file/line/key errors, --set overrides, presets, the shipped configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipelines.config import (
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    detector_config_from_dict,
    detector_config_to_dict,
    load_config,
)
from tcm.config import DBHeadConfig, DetectorConfig, FCEHeadConfig, PANHeadConfig

REPO = Path(__file__).resolve().parents[2]
# the detector configs (the CLIP4STR ones, model.kind recognizer, are checked in test_tasks.py)
CONFIGS = sorted(p for p in (REPO / "jobs" / "configs").glob("*.yaml") if not p.stem.startswith("clip4str_"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_file_and_line(tmp_path):
    path = write(tmp_path, "name: x\nmodel:\n  tcm:\n    num_promptz: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:4: model.tcm.num_promptz: unknown key" in str(err.value)


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, "optim:\n  lr: fast\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"{path}:2: optim.lr:" in message and "'fast'" in message


def test_every_problem_in_one_error(tmp_path):
    path = write(tmp_path, "trian: {epochs: 3}\nmodel:\n  head: {kind: pan, k: 50}\ntrain:\n  epochs: -1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "3 problems" in message
    assert f"{path}:1: trian: unknown key" in message
    assert f"{path}:3: model.head.k: unknown key" in message  # the PAN head has no DB `k`, named once
    assert f"{path}:5: train.epochs:" in message


def test_unknown_head_kind_is_rejected_by_name(tmp_path):
    path = write(tmp_path, "model:\n  head: {kind: east}\n")
    with pytest.raises(ConfigError, match="model.head"):
        load_config(path)


def test_set_overrides_are_typed_and_errors_name_the_flag(tmp_path):
    path = write(tmp_path, "model: {preset: tiny}\n")
    cfg = load_config(path, ["optim.lr=3e-4", "model.tcm.num_prompts=18", "data.train=[{uri: s3://b/d, weight: 2}]"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.detector().tcm.num_prompts == 18
    assert cfg.data.train[0].uri == "s3://b/d" and cfg.data.train[0].weight == 2
    with pytest.raises(ConfigError, match=r"--set train\.epoch=3: train\.epoch: unknown key"):
        load_config(path, ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"--set train\.epochs=many: train\.epochs"):
        load_config(path, ["train.epochs=many"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(path, ["train.epochs"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"exp\.yaml:2: not valid YAML"):
        load_config(write(tmp_path, "a: 1\n  b: [\n"))


def test_model_mirrors_detector_config_field_for_field():
    mirrored = set(ModelConfig.model_fields) - {"preset"}
    assert mirrored == {f.name for f in dataclasses.fields(DetectorConfig)}
    assert ModelConfig().to_detector() == DetectorConfig()


@pytest.mark.parametrize(("kind", "cls"), [("db", DBHeadConfig), ("pan", PANHeadConfig), ("fce", FCEHeadConfig)])
def test_tiny_preset_fills_what_the_yaml_leaves_out(tmp_path, kind, cls):
    cfg = load_config(write(tmp_path, f"model: {{preset: tiny, head: {{kind: {kind}}}, tcm: {{num_prompts: 32}}}}\n"))
    det = cfg.detector()
    tiny = DetectorConfig.tiny()
    assert det.clip == tiny.clip and det.input_size == tiny.input_size
    assert det.tcm == dataclasses.replace(tiny.tcm, num_prompts=32)
    assert isinstance(det.head, cls)
    assert cfg.data.augment.crop_size == tiny.input_size  # the crop follows the model's input size


def test_crop_size_must_match_input_size(tmp_path):
    path = write(tmp_path, "data:\n  augment: {crop_size: 320}\n")
    with pytest.raises(ConfigError, match=r"data\.augment\.crop_size \(320\) must equal model\.input_size \(640\)"):
        load_config(path)


def test_detector_json_round_trip():
    det = DetectorConfig.tiny(head=PANHeadConfig(mode="poly"))
    assert detector_config_from_dict(detector_config_to_dict(det)) == det


def test_with_overrides_revalidates_and_flat_params_are_dotted():
    cfg = ExperimentConfig()
    assert cfg.with_overrides({"optim.lr": 5e-4}).optim.lr == pytest.approx(5e-4)
    with pytest.raises(ConfigError, match="optim.lr"):
        cfg.with_overrides({"optim.lr": -1.0})
    params = cfg.flat_params()
    assert params["model.tcm.num_prompts"] == "4" and params["optim.kind"] == "adamw"
    assert all(isinstance(v, str) for v in params.values())


def test_tracking_uri_comes_from_the_environment_when_unset(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert ExperimentConfig().mlflow.resolved_tracking_uri() == "http://mlflow.example:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert ExperimentConfig().mlflow.resolved_tracking_uri() == "sqlite:///mlflow.db"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    det = cfg.detector()
    dataset, _, head = path.stem.partition("_")
    if path.stem == "tiny_cpu":
        assert det == DetectorConfig.tiny() and not cfg.train.use_gpu
        return
    assert det.head.kind == head
    # the paper's RN50, started from CLIP weights, its pos-embed resized to the released input_resolution
    assert dataclasses.replace(det.clip, weights=None, pretrain_image_size=224) == DetectorConfig().clip
    assert det.clip.weights
    assert det.clip.pretrain_image_size == {"db": 640, "pan": 736 if dataset == "ic15" else 640, "fce": 800}[head]
    assert cfg.train.use_gpu and cfg.data.train and cfg.data.val
    if dataset in {"ctw1500", "totaltext"}:
        assert det.head.mode == "poly"  # curved text
    if head == "db":  # the released DBParam/DBVisPostprocessor with its per-dataset thresholds
        released = {"ic15": (0.28, 0.2, 0.001), "td500": (0.08, 0.17, 0.0), "ctw1500": (0.08, 0.3, 0.0001),
                    "totaltext": (0.347, 0.3, 0.004)}[dataset]
        h = det.head
        assert h.postprocess == "tcm" and (h.bin_thresh, h.box_thresh, h.poly_epsilon_ratio) == released


def test_paper_configs_exist_for_every_dataset_and_head():
    names = {p.stem for p in CONFIGS}
    expected = {f"{d}_{h}" for d in ("ic15", "td500", "ctw1500", "totaltext") for h in ("db", "pan", "fce")}
    assert expected | {"tiny_cpu"} <= names


def test_demo_config_keeps_everything_in_the_working_folder(tmp_path):
    from pipelines.config import DatasetRef
    from pipelines.demo import DemoPlan, demo_config

    data = str(tmp_path / "data" / "synth")
    refs = {"train": DatasetRef(uri=data, split="train"), "val": DatasetRef(uri=data, split="val"), "ic15": None}
    cfg = demo_config(DemoPlan(tmp_path, epochs=3), refs)
    assert cfg.train.storage_path == str(tmp_path / "runs") and cfg.train.epochs == 3
    assert cfg.mlflow.resolved_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert [r.split for r in cfg.data.train] == ["train"] and [r.split for r in cfg.data.val] == ["val"]
    # tiny TCM-DB with the calibrated box threshold; one trainer worker holding a whole core; the held-out split
    # tested at the demo's VAL_SIZE
    tiny = DetectorConfig.tiny()
    assert cfg.detector() == tiny.with_head(dataclasses.replace(tiny.head, box_thresh=0.4))
    assert (cfg.train.num_workers, cfg.train.cpus_per_worker) == (1, 1.0)
    assert cfg.data.val_long_side == cfg.data.val_canvas == 192
