"""Ray Tune over Ray Train: a function trainable per trial, ASHA on val hmean, MLflow parent + child runs
(checked through a real `mlflow server` on loopback, as a team's tracking server would hold them)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
from mlflow import MlflowClient
from ray import tune

from pipelines import tracking
from pipelines.config import ExperimentConfig, load_config
from pipelines.tune import PARAMS, run_sweep, search_space, trial_overrides
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny_cpu.yaml"


def test_search_space_covers_prompts_lr_factors_and_base_lr():
    space = search_space(ExperimentConfig())
    assert set(space) == set(PARAMS)
    assert space["aux_loss_weight"].categories == [1.0]  # the paper's lambda unless a sweep lists more
    assert isinstance(space["num_prompts"], tune.search.sample.Categorical)
    assert sorted(space["num_prompts"].categories) == [4, 18, 32]
    assert 0.0 in space["text_encoder_lr_factor"].categories  # frozen text encoder is one of the choices
    lo, hi = ExperimentConfig().tune.lr
    assert all(lo <= space["lr"].sample() <= hi for _ in range(20))


@pytest.mark.parametrize("text_factor", [0.0, 0.1])  # 0 = frozen: the factor alone decides (tcm/optim.py)
def test_trial_choices_become_a_valid_config(text_factor):
    params = {"num_prompts": 18, "image_encoder_lr_factor": 0.2, "text_encoder_lr_factor": text_factor, "lr": 2e-4,
              "aux_loss_weight": 0.5}  # fmt: skip
    cfg = ExperimentConfig().with_overrides(trial_overrides(params))
    assert cfg.detector().tcm.num_prompts == 18
    assert cfg.detector().tcm.aux_loss_weight == 0.5
    assert (cfg.optim.lr, cfg.optim.image_encoder_lr_factor, cfg.optim.text_encoder_lr_factor) == (2e-4, 0.2, text_factor)


def test_a_range_with_equal_ends_is_a_constant():
    space = search_space(ExperimentConfig().with_overrides({"tune.lr": [1e-3, 1e-3]}))
    assert space["lr"] == 1e-3


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free loopback port (sqlite store, proxied artifacts); stopped by its process group."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    args = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", (root / "artifacts").as_uri()]  # fmt: skip
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=3):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}") from None
                time.sleep(1)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker: the group this test started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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
def test_two_trial_sweep_on_a_tracking_server_follows_mlflow_conventions(tmp_path, data, mlflow_server):
    from pipelines.checkpoint import save_checkpoint
    from tcm.build import build_detector

    base = load_config(TINY)
    init = save_checkpoint(tmp_path / "init", build_detector(base.detector(), pretrained=False), base.detector())
    cfg = load_config(
        TINY,
        [
            "name=sweep-test",
            f"data.train=[{{uri: '{data['train']}'}}]",
            f"data.val=[{{uri: '{data['val']}', split: val}}]",
            f"train.storage_path={tmp_path / 'runs'}",
            f"train.init_from={init}",  # every trial fine-tunes it (a prompt count of 8 re-initialises contexts)
            f"mlflow.tracking_uri={mlflow_server}",
            "data.batch_size=2",
            "train.epochs=1",
            "train.steps_per_epoch=1",
            "train.num_workers=1",
            "train.num_overlays=0",
            "tune.num_samples=2",
            "mlflow.promote_min_hmean=0",  # registration plumbing; the floor: tests/pipelines/test_registry.py
            "tune.num_prompts=[4, 8]",
            "tune.aux_loss_weight=[0.5, 2.0]",
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_sweep(cfg)

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"  # the model-training view
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == outcome.parent_run_id]
    assert [p.info.run_id for p in parents] == [outcome.parent_run_id]
    assert len(children) == 2 and len(runs) == 3
    assert {c.info.run_id for c in children} == {t.mlflow_run_id for t in outcome.trials}
    by_run = {t.mlflow_run_id: t for t in outcome.trials}
    for child in children:  # each child: its trial's choices as params, its val/hmean as Tune saw it
        trial, p = by_run[child.info.run_id], child.data.params
        assert p["model.tcm.num_prompts"] == str(trial.params["num_prompts"]) and p["train.init_from"] == str(init)
        assert float(p["optim.image_encoder_lr_factor"]) == pytest.approx(trial.params["image_encoder_lr_factor"])
        assert float(p["model.tcm.aux_loss_weight"]) == trial.params["aux_loss_weight"]
        assert child.data.metrics["val/hmean"] == pytest.approx(trial.val_hmean)

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    sha = {s: json.loads((Path(data[s]) / "manifest.json").read_text())["sha256"] for s in ("train", "val")}
    parent = client.get_run(outcome.parent_run_id)
    for run in (parent, *children):
        assert run.data.tags["mlflow.source.name"] and run.data.tags["mlflow.source.git.commit"] == commit
        inputs = {_tag(i, tracking.DATA_CONTEXT_TAG): i for i in run.inputs.dataset_inputs}
        assert set(inputs) == {"train", "val"}
        for split, i in inputs.items():
            assert i.dataset.digest == sha[split][:36] and _tag(i, tracking.MANIFEST_SHA_TAG) == sha[split]
            assert i.dataset.source_type == "local" and data[split] in i.dataset.source

    best = outcome.best
    assert best is not None and best.val_hmean == max(t.val_hmean for t in outcome.trials)
    assert parent.info.status == "FINISHED" and parent.data.tags["best.mlflow_run_id"] == best.mlflow_run_id
    assert parent.data.metrics["val/hmean"] == pytest.approx(best.val_hmean)
    assert {parent.data.tags[f"best.{k}"] for k in PARAMS} == {str(v) for v in best.params.values()}
    version = client.get_model_version_by_alias(cfg.mlflow.registered_model, cfg.mlflow.alias)
    assert str(version.version) == outcome.model_version
    assert version.tags["run_id"] == best.mlflow_run_id and version.tags["sweep_run_id"] == outcome.parent_run_id

    logged = {a.path for a in client.list_artifacts(outcome.parent_run_id, "comparison")}
    assert logged == {"comparison/trials.csv", "comparison/trials.md", "comparison/parallel_coordinates.png"}
    folder = Path(client.download_artifacts(outcome.parent_run_id, "comparison", str(tmp_path / "got")))
    with (folder / "trials.csv").open() as f:
        table = {r["trial_id"]: r for r in csv.DictReader(f)}
    assert {k: float(r["val/hmean"]) for k, r in table.items()} == {t.trial_id: t.val_hmean for t in outcome.trials}
    assert all(table[t.trial_id]["num_prompts"] == str(t.params["num_prompts"]) for t in outcome.trials)
    png = (folder / "parallel_coordinates.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def _tag(dataset_input, key: str) -> str:
    return next(t.value for t in dataset_input.tags if t.key == key)
