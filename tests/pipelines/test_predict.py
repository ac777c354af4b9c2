"""`tcm predict` warns about a model that cannot have learned to find text."""

from __future__ import annotations

from pipelines.predict import FEW_STEPS, model_warnings
from pipelines.registry import LoadedModel
from tcm.config import DetectorConfig

RANDOM_INIT = {"model": {"preset": "tiny", "clip": {"weights": None}}, "train": {"init_from": None}}


def loaded(meta: dict, experiment: dict | None = RANDOM_INIT) -> LoadedModel:
    return LoadedModel(model=None, detector=DetectorConfig.tiny(), experiment=experiment, meta=meta)


def test_a_few_steps_from_random_weights_with_zero_hmean_gets_both_warnings():
    warnings = model_warnings(loaded({"global_step": 2, "val": {"hmean": 0.0}}), tracking_uri=None)
    assert warnings == [
        "its logged validation hmean 0.0000 is below mlflow.promote_min_hmean 0.05",
        f"it was trained from random weights for only 2 steps (< {FEW_STEPS})",
    ]


def test_a_trained_or_warm_started_model_gets_none():
    assert model_warnings(loaded({"global_step": 5000, "val": {"hmean": 0.8}}), None) == []
    warm = {**RANDOM_INIT, "train": {"init_from": "models:/tcm-detector@champion"}}
    assert model_warnings(loaded({"global_step": 2, "val": {"hmean": 0.7}}, warm), None) == []
    clip = {**RANDOM_INIT, "model": {"clip": {"weights": "s3://tcm-models/clip/RN50.pt"}}}
    assert model_warnings(loaded({"global_step": 10, "val": {"hmean": 0.9}}, clip), None) == []


def test_the_mlflow_run_hmean_is_read_through_the_registry(tmp_path):
    from mlflow import MlflowClient

    from pipelines import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = MlflowClient(uri).create_run(registry.ensure_experiment(uri, "p")).info.run_id
    registry.RunLogger(uri, run_id).metrics({registry.VAL_HMEAN: 0.01}, step=3)
    meta = {"global_step": 9000, "val": {"hmean": 0.9}, "mlflow_run_id": run_id}  # the run's latest wins
    assert model_warnings(loaded(meta), uri) == ["its logged validation hmean 0.0100 is below mlflow.promote_min_hmean 0.05"]
