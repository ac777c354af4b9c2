"""Registry: no empty champions (the promotion floor), a model whose files are gone is reported as missing.

A real sqlite MLflow store and a real logged tiny detector; no Ray.
"""

from __future__ import annotations

import shutil
import warnings

import pytest
from mlflow import MlflowClient

from pipelines import registry
from pipelines.checkpoint import CheckpointError
from pipelines.config import MlflowConfig
from tcm.build import build_detector
from tcm.config import DetectorConfig


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(tracking URI, artifact folder, logger of a run with a tiny detector and the given val hmean)."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    exp = registry.ensure_experiment(uri, "floor", (root / "artifacts").as_uri())
    det = DetectorConfig.tiny()
    model = build_detector(det, pretrained=False)

    def logged_run(val_hmean: float | None, step: int = 2) -> tuple[str, str]:
        run_id = MlflowClient(uri).create_run(exp).info.run_id
        if val_hmean is not None:
            registry.RunLogger(uri, run_id).metrics({registry.VAL_HMEAN: val_hmean}, step=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model_uri = registry.log_model(uri, run_id, model, det, meta={"global_step": step, "mlflow_run_id": run_id},
                                           experiment={"model": {"preset": "tiny"}, "train": {}})  # fmt: skip
        return run_id, model_uri

    return uri, root / "artifacts", logged_run


def test_default_floor_is_above_zero():  # a model that learned nothing scores 0.0: it must not pass
    assert 0 < MlflowConfig().promote_min_hmean < 0.5


def test_zero_hmean_run_is_registered_without_champion(store):
    uri, _, logged_run = store
    client = MlflowClient(uri)
    good_run, good_uri = logged_run(0.62)
    version, promoted = registry.register_promoted(uri, good_uri, "floor-a", "champion", run_id=good_run, floor=0.05)
    assert promoted and str(client.get_model_version_by_alias("floor-a", "champion").version) == version

    empty_run, empty_uri = logged_run(0.0)
    version2, promoted2 = registry.register_promoted(uri, empty_uri, "floor-a", "champion", run_id=empty_run, floor=0.05)
    assert not promoted2 and version2 == str(int(version) + 1)  # registered all the same
    aliases = {k: str(v) for k, v in client.get_registered_model("floor-a").aliases.items()}
    assert aliases == {"champion": version}  # champion did not move
    note = client.get_model_version("floor-a", version2).tags[registry.PROMOTION_TAG]
    assert note == "registered without alias 'champion': validation hmean 0.0000 < mlflow.promote_min_hmean 0.05"
    assert client.get_run(empty_run).data.tags[registry.PROMOTION_TAG] == note  # the run says why too


def test_run_that_never_validated_gets_no_alias(store):
    uri, _, logged_run = store
    run_id, model_uri = logged_run(None)
    version, promoted = registry.register_promoted(uri, model_uri, "floor-b", "champion", run_id=run_id, floor=0.05)
    assert not promoted
    assert "champion" not in MlflowClient(uri).get_registered_model("floor-b").aliases
    assert "no validation hmean logged" in MlflowClient(uri).get_model_version("floor-b", version).tags[registry.PROMOTION_TAG]


def test_floor_zero_turns_the_gate_off_even_without_a_logged_metric(store):
    uri, _, logged_run = store
    run_id, model_uri = logged_run(None)
    version, promoted = registry.register_promoted(uri, model_uri, "floor-z", "best", run_id=run_id, floor=0.0)
    assert promoted and str(MlflowClient(uri).get_model_version_by_alias("floor-z", "best").version) == version


def test_floor_is_inclusive_and_explicit_metric_wins(store):
    uri, _, logged_run = store
    run_id, model_uri = logged_run(0.0)
    _, promoted = registry.register_promoted(uri, model_uri, "floor-c", "best", run_id=run_id, floor=0.3, hmean=0.3)
    assert promoted and MlflowClient(uri).get_model_version_by_alias("floor-c", "best")


def test_model_whose_files_are_gone_is_reported_missing_with_the_uri(store):
    uri, artifacts, logged_run = store
    run_id, model_uri = logged_run(0.5)
    version, _ = registry.register_promoted(uri, model_uri, "floor-d", "champion", run_id=run_id, floor=0.05)
    assert registry.load_model("models:/floor-d@champion", uri).detector == DetectorConfig.tiny()
    model_id = model_uri.rsplit("/", 1)[-1]
    gone = next(p for p in artifacts.rglob(model_id) if p.is_dir())
    shutil.rmtree(gone)  # the registry still lists it, the artifact store lost it (a stack restarted empty)
    with pytest.raises(CheckpointError) as err:
        registry.load_model("models:/floor-d@champion", uri)
    message = str(err.value)
    assert message.startswith("models:/floor-d@champion: model files missing: nothing at file://")
    assert f"/models/{model_id}/artifacts" in message and "not logged by tcm" not in message
