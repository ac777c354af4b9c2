"""Ray Train V2 on a local 2-CPU Ray: DDP workers, checkpoints, resume into the same MLflow run, S3 storage.

Each training test runs tiny TCM-DB for a step or two on synthetic 128 px images; MLflow is a sqlite store
shared by the module (one experiment per test).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipelines import registry, tracking
from pipelines.checkpoint import load_model_state
from pipelines.config import ExperimentConfig, load_config
from pipelines.storage import StorageError
from pipelines.train import build_trainer, make_optimizer, run_training, set_poly_lr, train_command

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny_cpu.yaml"


# ------------------------------------------------------------------------------------------------ fixtures


def synth_dataset(root: Path, split: str, n: int, seed: int) -> str:
    """Synthetic IC15-format images, ingested for real (Parquet shards + manifest.json)."""
    from pipelines.ingest import ingest
    from tcm.data.synth import write_dataset

    write_dataset("icdar2015", root / f"src-{split}", n=n, seed=seed, split=split, height=128, width=128)
    # 4 rows a shard: several read tasks whose blocks can arrive in any order unless the stream preserves it
    ingest("icdar2015", str(root / f"src-{split}"), str(root / split), split, rows_per_shard=4, progress=lambda _msg: None)
    return str(root / split)


@pytest.fixture(scope="module")
def data(tmp_path_factory, ray_local) -> dict[str, str]:
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    root = tmp_path_factory.mktemp("data")
    return {"train": synth_dataset(root, "train", 12, seed=1), "val": synth_dataset(root, "val", 3, seed=2)}


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return "sqlite:///" + str(tmp_path_factory.mktemp("mlflow") / "mlflow.db")


def tiny_config(data: dict[str, str], tracking_uri: str, storage: str, name: str, *overrides: str) -> ExperimentConfig:
    return load_config(
        TINY,
        [
            f"name={name}",
            f"data.train=[{{uri: '{data['train']}'}}]",
            f"data.val=[{{uri: '{data['val']}', split: val}}]",
            f"train.storage_path={storage}",
            f"mlflow.tracking_uri={tracking_uri}",
            f"mlflow.experiment={name}",
            "data.batch_size=2",
            "train.steps_per_epoch=2",
            "train.num_overlays=1",
            *overrides,
        ],
    )


def runs_of(tracking_uri: str, experiment: str) -> list:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return list(client.search_runs([exp.experiment_id])) if exp else []


# ------------------------------------------------------------------------------------------------ fast checks


def test_poly_schedule_decays_each_group_and_keeps_frozen_groups_at_zero():
    cfg = ExperimentConfig().with_overrides({"optim.lr": 1e-3, "optim.min_lr": 1e-7, "train.epochs": 10})
    w = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    opt = torch.optim.SGD(
        [
            {"params": [w[0]], "name": "head", "lr_factor": 1.0},
            {"params": [w[1]], "name": "image_encoder", "lr_factor": 0.1},
            {"params": [w[2]], "name": "text_encoder", "lr_factor": 0.0},
        ],
        lr=1e-3,
    )
    first = set_poly_lr(opt, cfg, 0)
    assert first == pytest.approx({"head": 1e-3, "image_encoder": 1e-4, "text_encoder": 0.0})
    mid = set_poly_lr(opt, cfg, 5)
    assert mid["head"] == pytest.approx((1e-3 - 1e-7) * 0.5**0.9 + 1e-7)
    assert mid["image_encoder"] == pytest.approx(0.1 * mid["head"])
    assert set_poly_lr(opt, cfg, 9)["text_encoder"] == 0.0  # mmcv's poly would lift it to min_lr


def test_init_from_another_prompt_count_reinitialises_only_the_contexts(tmp_path):
    from pipelines.checkpoint import read_checkpoint, save_checkpoint
    from pipelines.train import PROMPT_CONTEXTS, PROMPT_POSITIONS, fit_prompt_count
    from tcm.build import build_detector

    def detector(k: int):
        return load_config(TINY, [f"model.tcm.num_prompts={k}"]).detector()

    torch.manual_seed(0)
    trained = build_detector(detector(2), pretrained=False)
    save_checkpoint(tmp_path / "ckpt", trained, detector(2))
    ckpt = read_checkpoint(tmp_path / "ckpt", with_train_state=False)
    assert fit_prompt_count(ckpt, trained, detector(2)) is ckpt  # same K: untouched

    torch.manual_seed(1)
    model = build_detector(detector(6), pretrained=False)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    load_model_state(model, fit_prompt_count(ckpt, model, detector(6)), detector(6))  # would raise on a shape
    got, old = model.state_dict(), trained.state_dict()
    assert torch.equal(got[PROMPT_CONTEXTS], fresh[PROMPT_CONTEXTS]) and got[PROMPT_CONTEXTS].shape[1] == 6
    n = old[PROMPT_POSITIONS].shape[0]  # 2 contexts + prompt: the first n positions are the checkpoint's
    assert torch.equal(got[PROMPT_POSITIONS][:n], old[PROMPT_POSITIONS])
    assert torch.equal(got[PROMPT_POSITIONS][n:], fresh[PROMPT_POSITIONS][n:])
    others = [k for k in old if k not in (PROMPT_CONTEXTS, PROMPT_POSITIONS)]
    assert others and all(torch.equal(got[k], old[k]) for k in others)


def _trained_state(cfg: ExperimentConfig):
    """A tiny TCM-DB after three real optimiser steps through a CPU GradScaler that has lowered its scale once:
    Adam moments and step counts, a non-default scale and growth tracker, each group's lr from the schedule."""
    from tcm.build import build_detector

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no CLIP weights" is expected here
        model = build_detector(cfg.detector(), pretrained=False)
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
    x = torch.randn(2, 3, 64, 64)
    for step in range(3):
        set_poly_lr(optimizer, cfg, step)
        optimizer.zero_grad()
        loss = model(x)["prob_logits"].float().pow(2).mean() * (math.inf if step == 1 else 1.0)  # step 1 overflows
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return model, optimizer, scaler


def test_a_resumed_worker_starts_bit_exactly_where_the_checkpoint_left_off(tmp_path):
    """What `_setup_worker` does with a restored checkpoint (load_model_state + make_optimizer +
    restore_train_state) gives back the saved weights, optimiser state, grad scaler and lr, bit for bit."""
    from pipelines.checkpoint import read_checkpoint, restore_train_state, save_checkpoint
    from tcm.build import build_detector

    cfg = ExperimentConfig().with_overrides({"model.preset": "tiny", "optim.lr": 1e-3, "train.epochs": 10})
    model, optimizer, scaler = _trained_state(cfg)
    assert scaler.get_scale() != 2.0**12 and optimizer.state  # the state is not what a fresh build has
    save_checkpoint(tmp_path, model, cfg.detector(), optimizer=optimizer, scaler=scaler)

    ckpt = read_checkpoint(tmp_path, with_train_state=True)
    torch.manual_seed(1)  # other initial weights: only the restore can make them equal
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = build_detector(cfg.detector(), pretrained=False)
    load_model_state(fresh, ckpt, cfg.detector())
    fresh_opt = make_optimizer(fresh, cfg)
    fresh_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
    restore_train_state(ckpt, fresh_opt, fresh_scaler)

    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    saved, restored = optimizer.state_dict(), fresh_opt.state_dict()
    assert [g["lr"] for g in restored["param_groups"]] == [g["lr"] for g in saved["param_groups"]]
    assert restored["param_groups"] == saved["param_groups"]  # lr, lr_factor, betas, weight decay, names
    assert saved["state"].keys() == restored["state"].keys()
    for i, st in saved["state"].items():
        for key, value in st.items():
            assert torch.equal(value, restored["state"][i][key]), (i, key)  # moments and step counts
    assert fresh_scaler.state_dict() == scaler.state_dict()  # scale, growth tracker, factors


def test_unwritable_storage_fails_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    db = tmp_path / "mlflow.db"
    never_read = {"train": str(tmp_path / "no-data"), "val": str(tmp_path / "no-data")}
    cfg = tiny_config(never_read, f"sqlite:///{db}", str(blocker / "runs"), "unwritable")
    with pytest.raises(StorageError, match=r"train\.storage_path .*a-file/runs is not writable"):
        build_trainer(cfg)
    assert not db.exists()  # failed before MLflow, data or Ray were touched


def test_config_errors_stop_the_command_before_any_work(tmp_path):
    import typer

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: tiny\ntrain:\n  epoch: 3\n")
    app = typer.Typer()
    app.command()(train_command)
    result = CliRunner().invoke(app, ["--config", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:4: train.epoch: unknown key" in result.output


# ------------------------------------------------------------------------------------------------ Ray Train


@pytest.mark.slow
@pytest.mark.integration
def test_two_workers_train_checkpoint_and_log_to_mlflow(tmp_path, data, tracking_uri):
    # floor 0: this checks registration plumbing (the floor itself: tests/pipelines/test_registry.py)
    cfg = tiny_config(data, tracking_uri, str(tmp_path / "runs"), "two-workers", "train.epochs=1", "mlflow.promote_min_hmean=0")
    assert cfg.train.num_workers == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_training(cfg)

    assert math.isfinite(outcome.metrics["train/loss"]) and outcome.metrics["epoch"] == 1
    ckpt = Path(outcome.checkpoint)
    assert ckpt.name == "checkpoint_epoch=0001" and (ckpt / "model.pt").is_file()
    assert json.loads((ckpt / "meta.json").read_text())["mlflow_run_id"] == outcome.run_id

    (run,) = runs_of(tracking_uri, "two-workers")
    assert run.info.run_id == outcome.run_id and run.info.status == "FINISHED"
    m, params, tags = run.data.metrics, run.data.params, run.data.tags
    assert math.isfinite(m["train/loss"]) and m["train/images_per_s"] > 0
    assert 0.0 <= m["val/hmean"] <= 1.0 and {"val/precision", "val/recall"} <= m.keys()
    assert any(k.startswith("train/lr/image_encoder") for k in m) and tags["tcm.world_size"] == "2"
    assert params["model.tcm.num_prompts"] == "4" and params["train.num_workers"] == "2"
    manifest = json.loads((Path(data["train"]) / "manifest.json").read_text())
    assert tags["data.sha256"] == manifest["sha256"]
    assert tags["mlflow.source.name"] and tags["mlflow.source.git.commit"] == tracking.git_commit()
    inputs = {_context(i): i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val"} and inputs["train"].digest == manifest["sha256"][:36]
    assert inputs["train"].source_type == "local" and data["train"] in inputs["train"].source
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("two-workers")
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "validation/epoch=0001")}
    assert "validation/epoch=0001/threshold_curve.png" in logged and "validation/epoch=0001/overlays" in logged
    version = client.get_model_version_by_alias(cfg.mlflow.registered_model, cfg.mlflow.alias)
    assert str(version.version) == outcome.model_version and version.tags["run_id"] == outcome.run_id
    loaded = registry.load_model(f"models:/{cfg.mlflow.registered_model}@{cfg.mlflow.alias}", tracking_uri)
    assert loaded.detector == cfg.detector()
    info = mlflow.models.get_model_info(f"models:/{cfg.mlflow.registered_model}@{cfg.mlflow.alias}")
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 3, -1, -1]
    assert {"prob_logits", "score_map"} <= set(info.signature.outputs.input_names()) and info.saved_input_example_info


def _context(dataset_input) -> str:
    return next(t.value for t in dataset_input.tags if t.key == tracking.DATA_CONTEXT_TAG)


@pytest.mark.slow
@pytest.mark.integration
def test_deterministic_stream_replays_in_order_and_a_resumed_stream_continues_it(data):
    """`data.deterministic`: the same rows in the same order every run, and a stream built for epoch 1 (a resumed
    run) is, image for image and in order, the second pass of the stream built for epoch 0."""
    import hashlib

    from pipelines.train import build_datasets, ingest_config

    cfg = tiny_config(data, "sqlite://", "unused", "order", "data.deterministic=true", "data.num_workers=2")

    def ordered(ds) -> list[str]:
        return [hashlib.sha256(img.tobytes()).hexdigest() for b in ds.iter_batches(batch_size=None) for img in b["image"]]

    run = build_datasets(cfg)["train"]
    # the order is kept by the stream and by Train's split of it (a race between two small read tasks resolves
    # the same way most of the time on an idle machine, so the kept order is asserted on the plan as well)
    def kept(c: ExperimentConfig) -> bool:  # the order Train's split of the stream keeps (Ray has no public getter)
        return ingest_config(c)._get_user_execution_options("train").preserve_order

    assert run.context.execution_options.preserve_order and kept(cfg)
    assert not kept(tiny_config(data, "sqlite://", "unused", "o"))
    first, second = ordered(run), ordered(run)
    assert len(first) == 12 and sorted(first) != sorted(second)  # each pass is a new epoch of augmentation
    assert ordered(build_datasets(cfg)["train"]) == first
    assert ordered(build_datasets(cfg, first_epoch=2)["train"]) == second


@pytest.mark.slow
@pytest.mark.integration
def test_killed_run_resumes_from_its_checkpoint_into_the_same_mlflow_run(tmp_path, data, tracking_uri):
    """Stopped after epoch 1 and resumed, a deterministic run ends with the weights of an uninterrupted one.

    Tolerance: none (bit-exact). With `data.deterministic` the worker sees the same rows in the same order with
    the same augmentation (seed, epoch, row id) and the same dropout draws (seed, epoch, rank), and it runs one
    CPU thread, so every float operation repeats; a lost optimiser moment, a restarted lr schedule or a replayed
    or skipped epoch of data changes the weights far above float rounding."""
    storage = str(tmp_path / "runs")
    common = (
        "train.epochs=2",
        "train.num_workers=1",
        "mlflow.registered_model=null",
        "data.deterministic=true",
        "train.steps_per_epoch=null",  # full passes: 12 rows, batch 4 -> 3 steps an epoch
        "data.batch_size=4",
        "data.num_workers=2",  # two augmentation tasks at once: blocks race unless the order is kept
    )
    crashing = tiny_config(data, tracking_uri, storage, "resume", *common, "train.fail_after_epoch=1")
    with warnings.catch_warnings(), pytest.raises(Exception, match="fail_after_epoch=1"):
        warnings.simplefilter("ignore")
        run_training(crashing)
    (failed,) = runs_of(tracking_uri, "resume")
    assert failed.info.status == "FAILED"
    assert (Path(storage) / "resume" / "checkpoint_epoch=0001" / "model.pt").is_file()

    again = tiny_config(data, tracking_uri, storage, "resume", *common)  # same name + storage, no crash
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_training(again)
    assert outcome.resumed and outcome.metrics["epoch"] == 2

    (run,) = runs_of(tracking_uri, "resume")  # one MLflow run, not two
    assert run.info.run_id == failed.info.run_id == outcome.run_id and run.info.status == "FINISHED"
    history = MlflowClient(tracking_uri).get_metric_history(run.info.run_id, "epoch")
    assert sorted(h.step for h in history) == [1, 2]  # epoch 1 from the first attempt, 2 after resuming
    assert run.data.tags["tcm.resumed_from_epoch"] == "1"
    assert json.loads((Path(outcome.checkpoint) / "meta.json").read_text())["epoch"] == 2

    straight = tiny_config(data, tracking_uri, storage, "straight", *common, "mlflow.log_model=false")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = run_training(straight)
    resumed = torch.load(Path(outcome.checkpoint) / "model.pt", weights_only=True)
    uninterrupted = torch.load(Path(reference.checkpoint) / "model.pt", weights_only=True)
    moved = torch.load(Path(storage) / "resume" / "checkpoint_epoch=0001" / "model.pt", weights_only=True)
    assert any(not torch.equal(moved[k], v) for k, v in resumed.items())  # epoch 2 did train
    for k, v in uninterrupted.items():
        assert torch.equal(resumed[k], v), f"{k}: max |diff| {(resumed[k].float() - v.float()).abs().max():.3g}"


@pytest.mark.slow
@pytest.mark.integration
def test_s3_storage_holds_checkpoints_and_mlflow_artifacts(s3_env, data, tracking_uri):
    bucket = s3_env.create_bucket("tcm-train-test")
    cfg = tiny_config(
        data, tracking_uri, f"s3://{bucket}/runs", "on-s3", "train.epochs=1", "train.num_workers=1", "train.steps_per_epoch=1"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_training(cfg)
    assert outcome.checkpoint == f"s3://{bucket}/runs/on-s3/checkpoint_epoch=0001"
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert "runs/on-s3/checkpoint_epoch=0001/model.pt" in keys
    assert any(k.startswith("runs/mlflow-artifacts/") and k.endswith("threshold_curve.png") for k in keys)
    assert any(k.startswith("runs/mlflow-artifacts/") and k.endswith("extra_files/model.pt") for k in keys)
    loaded = registry.load_model(outcome.checkpoint)  # a checkpoint read back from the bucket
    assert loaded.detector == cfg.detector()
