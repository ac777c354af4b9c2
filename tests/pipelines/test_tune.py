"""Ray Tune over Ray Train: a function trainable per trial, ASHA on val hmean, MLflow parent + child runs."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from mlflow import MlflowClient
from ray import tune

from pipelines.config import ExperimentConfig, load_config
from pipelines.tune import run_sweep, search_space, trial_overrides

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny_cpu.yaml"


def test_search_space_covers_prompts_lr_factors_and_base_lr():
    space = search_space(ExperimentConfig())
    assert set(space) == {"num_prompts", "image_encoder_lr_factor", "text_encoder_lr_factor", "lr"}
    assert isinstance(space["num_prompts"], tune.search.sample.Categorical)
    assert sorted(space["num_prompts"].categories) == [4, 18, 32]
    assert 0.0 in space["text_encoder_lr_factor"].categories  # frozen text encoder is one of the choices
    lo, hi = ExperimentConfig().tune.lr
    assert all(lo <= space["lr"].sample() <= hi for _ in range(20))


@pytest.mark.parametrize(("text_factor", "trains_text"), [(0.0, False), (0.1, True)])
def test_trial_choices_become_a_valid_config(text_factor, trains_text):
    params = {"num_prompts": 18, "image_encoder_lr_factor": 0.2, "text_encoder_lr_factor": text_factor, "lr": 2e-4}
    cfg = ExperimentConfig().with_overrides(trial_overrides(params))
    assert cfg.detector().tcm.num_prompts == 18 and cfg.detector().tcm.train_text_encoder is trains_text
    assert (cfg.optim.lr, cfg.optim.image_encoder_lr_factor, cfg.optim.text_encoder_lr_factor) == (2e-4, 0.2, text_factor)


@pytest.fixture(scope="module")
def data(tmp_path_factory, ray_local) -> dict[str, str]:
    import ray

    from pipelines.ingest import ingest
    from tcm.data.synth import write_dataset

    ray.data.DataContext.get_current().enable_progress_bars = False
    root = tmp_path_factory.mktemp("data")
    out = {}
    for split, n, seed in (("train", 8, 3), ("val", 2, 4)):
        write_dataset("icdar2015", root / f"src-{split}", n=n, seed=seed, split=split, height=128, width=128)
        ingest("icdar2015", str(root / f"src-{split}"), str(root / split), split, progress=lambda _msg: None)
        out[split] = str(root / split)
    return out


@pytest.mark.slow
@pytest.mark.integration
def test_two_trial_sweep_gives_one_parent_and_two_child_runs(tmp_path, data):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(
        TINY,
        [
            "name=sweep-test",
            f"data.train=[{{uri: '{data['train']}'}}]",
            f"data.val=[{{uri: '{data['val']}', split: val}}]",
            f"train.storage_path={tmp_path / 'runs'}",
            f"mlflow.tracking_uri={tracking_uri}",
            "data.batch_size=2",
            "train.epochs=1",
            "train.steps_per_epoch=1",
            "train.num_workers=1",
            "train.num_overlays=0",
            "tune.num_samples=2",
            "mlflow.promote_min_hmean=0",  # registration plumbing; the floor: tests/pipelines/test_registry.py
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_sweep(cfg)

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == outcome.parent_run_id]
    assert [p.info.run_id for p in parents] == [outcome.parent_run_id]
    assert len(children) == 2 and len(runs) == 3
    assert {c.info.run_id for c in children} == {t.mlflow_run_id for t in outcome.trials}
    assert all(c.data.params["model.tcm.num_prompts"] in {"4", "18"} for c in children)
    assert all("val/hmean" in c.data.metrics for c in children)

    best = outcome.best
    assert best is not None and best.val_hmean == max(t.val_hmean for t in outcome.trials)
    version = client.get_model_version_by_alias(cfg.mlflow.registered_model, cfg.mlflow.alias)
    assert str(version.version) == outcome.model_version
    assert version.tags["run_id"] == best.mlflow_run_id and version.tags["sweep_run_id"] == outcome.parent_run_id
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["best.mlflow_run_id"] == best.mlflow_run_id
