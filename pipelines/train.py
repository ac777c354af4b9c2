"""Distributed training on Ray Train V2: `build_trainer(cfg)` (shared with tuning) and the per-worker loop.

    driver: check storage is writable -> MLflow run (found again by run key on a restart) -> TorchTrainer
    worker: build TCM -> restore the latest checkpoint (Train V2 hands it back when the same name + storage run
            again) -> epochs of Ray Data batches (DDP: gloo on CPU, nccl + AMP on GPU) -> poly LR by epoch ->
            validation every N epochs -> checkpoint every N epochs -> rank 0 logs everything to MLflow

Epochs are counted from 1: checkpoint `checkpoint_epoch=0003` holds the state after three epochs, and a run
restored from it continues with epoch 4, logging into the same MLflow run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer

from pipelines import registry, resources, storage, tracking
from pipelines.config import ConfigError, ExperimentConfig, load_config

if TYPE_CHECKING:  # torch is imported where used: `tcm --help` loads this module
    import torch

log = logging.getLogger(__name__)

ENV_TO_WORKERS = (  # endpoints the workers need (Ray starts them with the cluster's env): in the runtime env
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_DISABLE_TELEMETRY",
)
# Credentials the workers need too, but never in the runtime env: Ray logs a runtime env in full
# (runtime_env_agent.log) and shows it in its state API and dashboard. They travel inside the train loop's
# config instead (pickled to the workers, never printed: see WorkerSecrets) and are set in the worker's env.
SECRETS_TO_WORKERS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)


class InjectedFailure(RuntimeError):
    """Raised by `train.fail_after_epoch` (tests simulate a crash after a checkpoint with it)."""


@dataclasses.dataclass
class TrainOutcome:
    run_id: str
    tracking_uri: str
    resumed: bool
    metrics: dict[str, Any]
    checkpoint: str | None  # URI of the latest checkpoint folder
    model_uri: str | None
    model_version: str | None


# ------------------------------------------------------------------------------------------------ driver side


def resolve_storage(uri: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig: s3 gets an explicit S3FileSystem (pyarrow ignores
    AWS_ENDPOINT_URL*) and a scheme-less path; local paths become absolute (workers run in other folders)."""
    loc = storage.resolve(uri)
    return (loc.path, loc.fs) if loc.is_s3 else (loc.path, None)


def check_storage(uri: str, name: str) -> None:
    """Fail before any work when checkpoints could not be written (probe-writes a file)."""
    try:
        storage.check_writable(storage.resolve(uri).join(name))
    except storage.StorageError as err:
        raise storage.StorageError(f"train.storage_path {storage.redact_uri(uri)} is not writable: {err}") from None


def data_hashes(cfg: ExperimentConfig) -> dict[str, str]:
    """Manifest sha256 of every dataset the run reads, keyed `data.<role>.<i>.sha256` (MLflow tags)."""
    tags: dict[str, str] = {}
    for role, refs in (("train", cfg.data.train), ("val", cfg.data.val)):
        for i, ref in enumerate(refs):
            try:
                tags[f"data.{role}.{i}.sha256"] = tracking.manifest_sha256(ref.uri)
            except (storage.StorageError, ValueError) as err:
                raise ConfigError(f"data.{role}[{i}].uri: no readable ingest manifest ({err})") from None
            tags[f"data.{role}.{i}.uri"] = storage.redact_uri(ref.uri)
    if len(cfg.data.train) == 1:
        tags["data.sha256"] = tags["data.train.0.sha256"]
    return tags


def with_absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Relative local paths (data, storage, init_from) made absolute: Ray workers run in other folders."""

    def fix(uri: str) -> str:
        return uri if "://" in uri else os.path.abspath(uri)

    overrides: dict[str, Any] = {
        "train.storage_path": fix(cfg.train.storage_path),
        "data.train": [{**r.model_dump(), "uri": fix(r.uri)} for r in cfg.data.train],
        "data.val": [{**r.model_dump(), "uri": fix(r.uri)} for r in cfg.data.val],
    }
    if cfg.train.init_from and not cfg.train.init_from.startswith(("models:/", "runs:/")):
        overrides["train.init_from"] = fix(cfg.train.init_from)
    return cfg.with_overrides(overrides, source="absolute paths")


def worker_env() -> dict[str, str]:
    """The runtime env's variables: endpoints and settings, no credential (see SECRETS_TO_WORKERS)."""
    return {k: os.environ[k] for k in ENV_TO_WORKERS if k in os.environ}


def init_ray(**kwargs: Any) -> None:
    """`ray.init()` (RAY_ADDRESS picks the cluster) that hands the endpoint variables to every task and actor of
    this driver: a `tcm retrain` / `tcm evaluate` started on a laptop against a cluster would otherwise run its
    data and inference actors without the S3 endpoint. Inside a submitted job the job's runtime_env already
    carries them (`tcm submit` forwards them), and Ray refuses the same variable from both."""
    import ray

    if ray.is_initialized():
        return
    env = {} if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ else worker_env()
    ray.init(runtime_env={"env_vars": env} if env else None, **kwargs)


class WorkerSecrets:
    """The driver's credentials on their way to the training workers: values never shown by repr/str."""

    def __init__(self, values: Mapping[str, str]):
        self._values = dict(values)

    @classmethod
    def from_env(cls) -> WorkerSecrets:
        return cls({k: os.environ[k] for k in SECRETS_TO_WORKERS if k in os.environ})

    def apply(self) -> None:
        """Set them in this (worker) process's environment, where boto3, pyarrow and MLflow read them."""
        os.environ.update(self._values)

    def __repr__(self) -> str:
        return f"WorkerSecrets({', '.join(sorted(self._values))}: redacted)"

    __str__ = __repr__


def train_split(cfg: ExperimentConfig) -> str:
    splits = {ref.split for ref in cfg.data.train}
    if len(splits) != 1:
        raise ConfigError(f"data.train: all training sets must name the same split to be mixed, got {sorted(splits)}")
    return splits.pop()


def build_datasets(cfg: ExperimentConfig, first_epoch: int = 1) -> dict[str, Any]:
    """Ray Datasets for the run: `train` (augmented + codec targets, sources mixed by weight) and `val`.

    `first_epoch`: the epoch the run (re)starts at, so a resumed run continues the augmentation stream."""
    from pipelines.tasks import task_for

    d = cfg.data
    datasets = {"train": task_for(cfg.tcm_config()).train_dataset(cfg, first_epoch - 1)}
    if d.val:
        datasets["val"] = eval_datasets(cfg, d.val)
    return datasets


def ingest_config(cfg: ExperimentConfig) -> Any:
    """Train's data config: train split across workers (every worker sees all of val and evaluates its own slice
    by id hash), with the object-store budget on the train stream (Train replaces a dataset's own options)."""
    import ray.train

    from pipelines.augment import with_budget

    options = with_budget(ray.train.DataConfig.default_ingest_options(), cfg.data.object_store_budget_gib)
    options.preserve_order = cfg.data.deterministic  # the split follows block order too (ignores locality)
    return ray.train.DataConfig(datasets_to_split=["train"], execution_options={"train": options})


def eval_datasets(cfg: ExperimentConfig, refs: Sequence[Any], detector: Any = None) -> Any:
    """The eval rows of every ref (ingested folder + split), concatenated; normalised as `detector` expects
    (default: cfg's model; a recogniser's config for word rows)."""
    from pipelines.tasks import task_for

    model_cfg = detector or cfg.tcm_config()
    task = task_for(model_cfg)
    parts = [task.eval_dataset(cfg, ref, model_cfg) for ref in refs]
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def steps_per_epoch(cfg: ExperimentConfig) -> int:
    """Training steps of one epoch on each worker: train.steps_per_epoch, else the manifests' rows of the train
    split (x fraction) over the global batch."""
    if cfg.train.steps_per_epoch:
        return cfg.train.steps_per_epoch
    split, rows = train_split(cfg), 0
    for ref in cfg.data.train:
        manifest = json.loads(storage.read_bytes(storage.resolve(ref.uri).join("manifest.json")))
        rows += int(manifest.get("splits", {}).get(split, 0))
    return max(1, math.ceil(rows * cfg.data.fraction / (cfg.data.batch_size * cfg.train.num_workers)))


def latest_epoch(storage_uri: str, name: str) -> int:
    """Completed epochs of the newest checkpoint folder of run `name` (0 when none): sets the augmentation
    stream of a resumed run. Train V2 itself decides which checkpoint is restored."""
    import re

    import pyarrow.fs as pafs

    run = storage.resolve(storage_uri).join(name)
    try:
        infos = run.fs.get_file_info(pafs.FileSelector(run.path, allow_not_found=True))
    except OSError:
        return 0
    epochs = [int(m.group(1)) for i in infos if (m := re.fullmatch(r"checkpoint_epoch=(\d+)", i.base_name))]
    return max(epochs, default=0)


@dataclasses.dataclass
class BuiltTrainer:
    """A TorchTrainer plus the driver-side facts its caller finishes the run with."""

    trainer: Any
    tracking_uri: str
    run_id: str  # the MLflow run the workers log into
    resumed: bool  # that MLflow run existed already (the same run started again)
    experiment_id: str


def build_trainer(
    cfg: ExperimentConfig,
    *,
    parent_run_id: str | None = None,
    callbacks: Sequence[Any] = (),
    run_tags: Mapping[str, str] | None = None,
) -> BuiltTrainer:
    """A TorchTrainer for `cfg`: shared by `tcm train` and each Tune trial.

    Checks storage, hashes the data, finds or opens the MLflow run (key = name + storage, so the same run
    started again continues the same MLflow run; `parent_run_id` nests it under a sweep), builds the datasets.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    if not cfg.data.train:
        raise ConfigError("data.train: no training dataset configured")
    cfg = with_absolute_paths(cfg)
    check_storage(cfg.train.storage_path, cfg.name)
    tags = data_hashes(cfg)
    tracking_uri = registry.absolute_tracking_uri(cfg.mlflow.resolved_tracking_uri())
    experiment_id = registry.ensure_experiment(
        tracking_uri, cfg.mlflow.experiment, registry.default_artifact_location(cfg.mlflow, cfg.train.storage_path),
        configured=cfg.mlflow.artifact_location is not None,
    )
    key = registry.run_key(cfg.name, cfg.train.storage_path)
    run_id, resumed = registry.get_or_create_run(
        tracking_uri,
        experiment_id,
        key,
        cfg.name,
        parent_run_id=parent_run_id,
        tags={
            **tags,
            "ray.run_name": cfg.name,
            "ray.storage_path": storage.redact_uri(cfg.train.storage_path),
            **(run_tags or {}),
        },
    )
    tracking.log_datasets(tracking_uri, run_id, [*cfg.data.train, *cfg.data.val])
    storage_path, filesystem = resolve_storage(cfg.train.storage_path)
    loop_config = {
        "cfg": cfg.model_dump(mode="json"),
        "tracking_uri": tracking_uri,
        "mlflow_run_id": run_id,
        "data_tags": tags,
        "secrets": WorkerSecrets.from_env(),
        "steps_per_epoch": steps_per_epoch(cfg),  # a per-step schedule's length (optim.schedule: onecycle)
    }
    resources = {"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if cfg.train.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.num_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=list(callbacks),
            worker_runtime_env={"env_vars": worker_env()},
        ),
        datasets=build_datasets(cfg, latest_epoch(cfg.train.storage_path, cfg.name) + 1),
        dataset_config=ingest_config(cfg),
    )
    return BuiltTrainer(trainer, tracking_uri, run_id, resumed, experiment_id)


def run_training(cfg: ExperimentConfig, *, register: bool = True) -> TrainOutcome:
    """Train (or resume) the run `cfg.name`, then register its model with `cfg.mlflow.alias`."""
    init_ray()
    cfg = with_absolute_paths(cfg)
    built = build_trainer(cfg)
    tracking_uri, run_id = built.tracking_uri, built.run_id
    try:
        resources.require(resources.training_ask(cfg))  # never wait for ever for GPUs the cluster cannot have
        result = built.trainer.fit()
    except BaseException:
        registry.finish_run(tracking_uri, run_id, "FAILED")
        raise
    model_uri = registry.run_model_uri(tracking_uri, run_id)
    version = None
    if register and model_uri and cfg.mlflow.registered_model:
        from pipelines.tasks import task_for

        primary = task_for(cfg.tcm_config()).primary_metric  # hmean; a recogniser's word accuracy
        version, _ = registry.register_promoted(
            tracking_uri, model_uri, cfg.mlflow.registered_model, cfg.mlflow.alias, {"run_id": run_id},
            run_id=run_id, floor=cfg.mlflow.promote_min_hmean, metric=f"val/{primary}", what=f"validation {primary}",
        )  # fmt: skip
    registry.finish_run(tracking_uri, run_id, "FINISHED")
    checkpoint = None
    if result.checkpoint is not None:
        checkpoint = _checkpoint_uri(cfg.train.storage_path, result.checkpoint.path)
    metrics = dict(result.metrics or {})
    return TrainOutcome(run_id, tracking_uri, built.resumed, metrics, checkpoint, model_uri, version)


def _checkpoint_uri(storage_uri: str, path: str) -> str:
    """A checkpoint's URI in the user's terms (s3:// kept; local paths as they are)."""
    loc = storage.resolve(storage_uri)
    if loc.is_s3:
        return "s3://" + path.lstrip("/")
    return path


# ------------------------------------------------------------------------------------------------ worker side


@dataclasses.dataclass
class _State:
    """What a worker carries from epoch to epoch (and a checkpoint restores)."""

    epoch: int = 0  # completed epochs
    global_step: int = 0
    val: dict[str, float] = dataclasses.field(default_factory=dict)  # latest validation metrics


@dataclasses.dataclass
class _Worker:
    """One Ray Train worker's training objects."""

    cfg: ExperimentConfig
    loop: dict[str, Any]  # build_trainer's loop config: cfg as JSON, tracking URI, MLflow run id, data tags
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module  # the bare detector: loss, validation, checkpoints
    ddp: torch.nn.Module  # its DDP wrapper for the training forward (the model itself on one worker)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None  # None: full precision (CPU, or amp off)
    codec: Any  # the task's decoder: the head's codec, the recogniser's tokenizer
    logger: registry.RunLogger | None  # rank 0 only
    state: _State
    task: Any = None  # pipelines.tasks.Task: encode, loss, decode and score of this model's task


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker. `config` = build_trainer's loop config (JSON-able values + WorkerSecrets)."""
    import ray.train
    import torch

    if config.get("secrets") is not None:
        config["secrets"].apply()  # before anything reads storage or MLflow
    w = _setup_worker(config)
    cfg, state, E = w.cfg, w.state, w.cfg.train.epochs
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if cfg.data.val else None
    if w.rank == 0:
        log.info("[tcm] %s: epochs %d..%d on %d worker(s), device %s", cfg.name, state.epoch + 1, E, w.world, w.device)
    for epoch in range(state.epoch + 1, E + 1):
        # dropout draws from (seed, epoch, rank), not from where the process's generator happens to be: a resumed
        # run draws in epoch k what an uninterrupted one draws there
        torch.manual_seed(epoch_seed(cfg.train.seed, epoch, w.rank))
        lrs = set_poly_lr(w.optimizer, cfg, epoch - 1)
        stats = _train_epoch(w, train_shard)
        state.epoch, state.global_step = epoch, state.global_step + int(stats.pop("steps"))
        metrics = {f"train/{k}": v for k, v in stats.items()} | {f"train/lr/{name}": lr for name, lr in lrs.items()}
        if val_shard is not None and (epoch % cfg.train.val_every == 0 or epoch == E):
            state.val = _validate(w, val_shard, epoch)
            metrics.update({f"val/{k}": v for k, v in state.val.items()})
        if w.logger is not None:
            w.logger.metrics({**metrics, "epoch": epoch}, step=epoch)
            _print_epoch(cfg.name, epoch, E, metrics)
            if epoch == E and cfg.mlflow.log_model:  # before the final report: Tune may stop a trial right after it
                _log_final_model(w)
        _report(w, metrics, checkpoint=epoch % cfg.train.checkpoint_every == 0 or epoch == E)
        if cfg.train.fail_after_epoch == epoch:
            raise InjectedFailure(f"train.fail_after_epoch={epoch}: injected failure after reporting epoch {epoch}")
    _barrier(w.world)


def _setup_worker(config: dict[str, Any]) -> _Worker:
    """Build the detector, restore the latest checkpoint (or warm-start), optimiser, AMP, DDP, rank-0 logger."""
    import ray.train
    import ray.train.torch
    import torch

    from pipelines.checkpoint import load_model_state, read_checkpoint, restore_train_state
    from pipelines.tasks import task_for
    from tcm.build import convert_sync_batchnorm

    cfg = ExperimentConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    # one thread per reserved CPU: oversubscribed threads on shared cores are ~10x slower (tiny TCM-DB step,
    # batch 8 on a loaded 2-core machine: 0.18 s with 1 thread, 2.5 s with 2)
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    np.random.seed(cfg.train.seed + rank)

    det_cfg = cfg.tcm_config()  # the model's tcm config, detector or recogniser
    task = task_for(det_cfg)
    restored = ray.train.get_checkpoint()  # Train V2: the latest checkpoint of this run name + storage
    model = task.build_model(det_cfg, pretrained=restored is None and cfg.train.init_from is None)
    state, ckpt = _State(), None
    if restored is not None:
        with restored.as_directory() as folder:
            ckpt = read_checkpoint(folder, with_train_state=True)
        load_model_state(model, ckpt, det_cfg)  # a checkpoint of another model config: named, not a shape error
        state = _State(ckpt.epoch, int(ckpt.meta.get("global_step", 0)), dict(ckpt.meta.get("val", {})))
    elif cfg.train.init_from:
        init = fit_prompt_count(_load_init(cfg.train.init_from, config.get("tracking_uri")), model, det_cfg)
        load_model_state(model, init, det_cfg)

    if cfg.train.uses_sync_batchnorm():
        model = convert_sync_batchnorm(model)  # released: SyncBN under DDP; same parameters, same state-dict keys
    model.to(device)
    optimizer = make_optimizer(model, cfg)  # before DDP: param_groups freezes parts (requires_grad=False)
    use_amp = cfg.train.amp and device.type == "cuda"
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if use_amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)  # bf16 needs no loss scaling
    if ckpt is not None:
        restore_train_state(ckpt, optimizer, scaler)
    ddp = task.train_module(model)
    if world > 1:
        # find_unused_parameters: optional TCM parts can leave parameters without gradients (TCM configs set it)
        ddp = ray.train.torch.prepare_model(ddp, parallel_strategy_kwargs={"find_unused_parameters": True})

    logger = None
    if rank == 0:
        logger = registry.RunLogger(config["tracking_uri"], config["mlflow_run_id"])
        logger.params(cfg.flat_params())
        logger.tags({**config["data_tags"], "tcm.world_size": world, "tcm.device": device.type, "tcm.task": task.kind})
        if ckpt is not None:
            logger.tags({"tcm.resumed_from_epoch": ckpt.epoch})
            print(f"resumed from checkpoint at epoch {ckpt.epoch}", flush=True)  # in the job logs (tests look for it)
    codec = task.decoder(det_cfg)
    return _Worker(cfg, config, rank, world, device, model, ddp, optimizer, scaler, amp_dtype, codec, logger, state, task)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """torch's seed for one worker's epoch: a function of (seed, epoch, rank) only."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _log_final_model(w: _Worker) -> None:
    loop, state = w.loop, w.state
    meta = {"epoch": state.epoch, "global_step": state.global_step, "mlflow_run_id": loop["mlflow_run_id"]}
    registry.log_model(
        loop["tracking_uri"], loop["mlflow_run_id"], w.model, w.cfg.tcm_config(), meta=meta, experiment=loop["cfg"]
    )


def _load_init(uri: str, tracking_uri: str | None):
    """A checkpoint to warm-start from: a checkpoint folder, or an MLflow model URI's state dict."""
    from pipelines.checkpoint import load_checkpoint, read_checkpoint

    if uri.startswith(("models:/", "runs:/")):
        if tracking_uri:
            import mlflow

            mlflow.set_tracking_uri(tracking_uri)
        with tempfile.TemporaryDirectory(prefix="tcm-init-") as tmp:
            return read_checkpoint(registry.download_model_files(uri, tmp), with_train_state=False)
    return load_checkpoint(uri)


PROMPT_CONTEXTS = "text_encoder.contexts"  # (1, K, D): the K learnable context tokens
PROMPT_POSITIONS = "text_encoder.clip.positional_embedding"  # (1 + K + prompt tokens, D): one row per position


def fit_prompt_count(ckpt: Any, model: torch.nn.Module, det_cfg: Any) -> Any:
    """A warm start from a checkpoint with another prompt count K (a sweep over `model.tcm.num_prompts`).

    The K learned contexts do not map onto K' others: they are re-initialised (the fresh model's init). The
    positional table is indexed by position (SOT, contexts, prompt), truncated to the prompt length at build:
    the checkpoint's rows where it has them, the fresh model's beyond. Every other weight is the checkpoint's;
    the checkpoint's config then names K' so the load checks everything else as usual."""
    old_k, new_k = ckpt.detector.tcm.num_prompts, det_cfg.tcm.num_prompts
    if old_k == new_k or PROMPT_CONTEXTS not in ckpt.model_state:
        return ckpt
    fresh = model.state_dict()
    state = dict(ckpt.model_state)
    state[PROMPT_CONTEXTS] = fresh[PROMPT_CONTEXTS].clone()  # (1, K', D)
    positions = fresh[PROMPT_POSITIONS].clone()  # (L', D)
    n = min(positions.shape[0], state[PROMPT_POSITIONS].shape[0])
    positions[:n] = state[PROMPT_POSITIONS][:n]
    state[PROMPT_POSITIONS] = positions
    log.info("[tcm] init_from %s: %d prompt contexts re-initialised as %d", ckpt.path, old_k, new_k)
    tcm_cfg = dataclasses.replace(ckpt.detector.tcm, num_prompts=new_k)
    return dataclasses.replace(ckpt, model_state=state, detector=dataclasses.replace(ckpt.detector, tcm=tcm_cfg))


def make_optimizer(model: torch.nn.Module, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    """The configured optimiser over the task's parameter groups (LR factors, no decay on norms and biases)."""
    import torch

    from pipelines.tasks import task_for

    o = cfg.optim
    groups = task_for(cfg.tcm_config()).param_groups(model, cfg)
    groups = [g for g in groups if g["params"]]
    for i, g in enumerate(groups):
        g.setdefault("name", f"group{i}")
        g["lr_factor"] = g.get("lr", o.lr) / o.lr  # the poly schedule scales each group's share of the base lr
    match o.kind:
        case "adam":
            return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas, eps=o.eps)
        case "adamw":
            return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas, eps=o.eps)
        case "sgd":
            return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def poly_lr(cfg: ExperimentConfig, epoch_index: int) -> float:
    """mmcv poly by epoch: (lr - min_lr) (1 - e / E)^power + min_lr, e = completed epochs."""
    o = cfg.optim
    coeff = (1 - epoch_index / cfg.train.epochs) ** o.poly_power
    return (o.lr - o.min_lr) * coeff + o.min_lr


def onecycle_lr(cfg: ExperimentConfig, progress: float) -> float:
    """torch's OneCycleLR (cosine both ways, div_factor 25, final_div_factor 1e4) at `progress` (0..1) of the
    run: warm-up over optim.warmup_fraction from lr/25 to lr, then down to lr/25/1e4 (CLIP4STR, per step)."""
    o, p = cfg.optim, min(max(progress, 0.0), 1.0)
    start, end = o.lr / 25, o.lr / 25 / 1e4

    def cos(a: float, b: float, t: float) -> float:
        return b + (a - b) / 2 * (1 + math.cos(math.pi * t))

    if p < o.warmup_fraction:
        return cos(start, o.lr, p / o.warmup_fraction)
    return cos(o.lr, end, (p - o.warmup_fraction) / max(1 - o.warmup_fraction, 1e-9))


def set_step_lr(optimizer: torch.optim.Optimizer, cfg: ExperimentConfig, progress: float) -> None:
    """optim.schedule onecycle: every group's lr at this step (its factor of the base)."""
    base = onecycle_lr(cfg, progress)
    for g in optimizer.param_groups:
        g["lr"] = base * g["lr_factor"]


def set_poly_lr(optimizer: torch.optim.Optimizer, cfg: ExperimentConfig, epoch_index: int) -> dict[str, float]:
    """Set every group's lr for this epoch. A group with factor 0 stays at exactly 0 (frozen), unlike mmcv's
    poly which would lift it to min_lr. (optim.schedule onecycle: its value at the epoch's start.)"""
    base = poly_lr(cfg, epoch_index) if cfg.optim.schedule == "poly" else onecycle_lr(cfg, epoch_index / cfg.train.epochs)
    out = {}
    for g in optimizer.param_groups:
        g["lr"] = base * g["lr_factor"]
        out[g["name"]] = g["lr"]
    return out


def _tensors(batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """collate_fn: the numeric columns (image + codec targets) as tensors; ids and the like stay behind."""
    import torch

    return {k: torch.as_tensor(v) for k, v in batch.items() if isinstance(v, np.ndarray) and v.dtype.kind in "fiub"}


def _train_epoch(w: _Worker, shard: Any) -> dict[str, float]:
    """One pass over this worker's shard; losses averaged over all workers' images, throughput of all workers."""
    import torch

    cfg = w.cfg
    w.ddp.train()
    sums: dict[str, float] = {}
    images = steps = 0
    start = time.perf_counter()
    batches = shard.iter_torch_batches(
        batch_size=cfg.data.batch_size, collate_fn=_tensors, device=w.device, drop_last=False, prefetch_batches=2
    )
    per_epoch = max(int(w.loop.get("steps_per_epoch") or 1), 1)
    for step, batch in enumerate(_limit(batches, cfg.train.steps_per_epoch)):
        if cfg.optim.schedule == "onecycle":
            set_step_lr(w.optimizer, cfg, (w.state.epoch + min(step / per_epoch, 1.0)) / cfg.train.epochs)
        B = batch["image"].shape[0]  # (B, 3, H, W) normalised
        amp = torch.autocast(w.device.type, dtype=w.amp_dtype) if w.amp_dtype else contextlib.nullcontext()
        losses = w.task.losses(w.ddp, w.model, batch, amp)  # the forward through DDP, losses in float32
        w.optimizer.zero_grad(set_to_none=True)
        w.scaler.scale(losses["loss"]).backward()
        if cfg.optim.grad_clip:
            w.scaler.unscale_(w.optimizer)
            torch.nn.utils.clip_grad_norm_(w.model.parameters(), cfg.optim.grad_clip)
        w.scaler.step(w.optimizer)
        w.scaler.update()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * B
        images += B
        steps += 1
    elapsed = time.perf_counter() - start
    all_images, *all_sums = _all_reduce_sum([images, *sums.values()], w.device)
    stats = {k: v / max(all_images, 1) for k, v in zip(sums, all_sums, strict=True)}
    if not math.isfinite(stats.get("loss", 0.0)):
        raise FloatingPointError(f"training loss is {stats['loss']} (optim.lr {cfg.optim.lr}): lower it or set optim.grad_clip")
    stats["images_per_s"] = all_images / max(elapsed, 1e-9)
    stats["epoch_time_s"] = elapsed
    stats["steps"] = steps
    return stats


def _limit(it: Iterator[Any], n: int | None) -> Iterator[Any]:
    for i, item in enumerate(it):
        if n is not None and i >= n:
            return
        yield item


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    import torch

    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _barrier(world: int) -> None:
    import torch

    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _validate(w: _Worker, shard: Any, epoch: int) -> dict[str, float]:
    """Every worker predicts its slice of val (by id hash); rank 0 gathers, scores, plots and logs."""
    import torch

    from pipelines.evaluate import overlay_source

    cfg = w.cfg
    _broadcast_buffers(w.model, w.world)
    keep = lambda row_id: _owner(row_id, w.world) == w.rank  # noqa: E731
    mine = w.task.predict_rows(w.model, w.codec, shard, cfg, w.device, keep)
    gathered: list[Any] = [mine]
    if w.world > 1:
        gathered = [None] * w.world
        torch.distributed.all_gather_object(gathered, mine)
    if w.rank != 0:
        return {}
    rows = [r for part in gathered for r in part]
    with tempfile.TemporaryDirectory(prefix="tcm-val-") as tmp:
        metrics = w.task.score(rows, cfg, Path(tmp), num_samples=cfg.train.num_overlays, images=overlay_source(cfg.data.val))
        if w.logger is not None:
            w.logger.artifacts(tmp, f"validation/epoch={epoch:04d}")
    return metrics


def _broadcast_buffers(model: torch.nn.Module, world: int) -> None:
    """Rank 0's buffers to every rank, so each validates the model rank 0 checkpoints: after training steps the
    BatchNorm running statistics are each rank's own (DDP sends rank 0's only before a training forward), and
    validation scored a different model per slice (tiny TCM-DB, 24 images: hmean 0.8108 gathered vs 0.8133)."""
    import torch

    if world > 1 and torch.distributed.is_initialized():
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)


def _owner(row_id: str, world: int) -> int:
    import zlib

    return zlib.crc32(row_id.encode()) % world


def _report(w: _Worker, metrics: Mapping[str, float], checkpoint: bool) -> None:
    """Report the epoch to Ray Train (every rank must), with a checkpoint folder written by rank 0."""
    import ray.train

    from pipelines.checkpoint import save_checkpoint

    state = w.state
    report = {  # the MLflow names (pipelines.tracking): Tune ranks trials by val/hmean
        "epoch": state.epoch,
        "train/loss": metrics.get("train/loss", math.nan),
        "train/images_per_s": metrics.get("train/images_per_s", 0.0),
        # the latest validation (0 before the first): detection val/hmean, val/precision, val/recall; recognition
        # val/accuracy, val/one_minus_ned; val/score = the task's primary metric (what Tune ranks trials by)
        **{f"val/{k}": state.val.get(k, 0.0) for k in w.task.report_metrics},
        "val/score": state.val.get(w.task.primary_metric, 0.0),
    }
    if not checkpoint:
        ray.train.report(report)
        return
    name = f"checkpoint_epoch={state.epoch:04d}"
    if w.rank != 0:
        ray.train.report(report, checkpoint=None, checkpoint_dir_name=name)
        return
    meta = {
        "epoch": state.epoch,
        "global_step": state.global_step,
        "mlflow_run_id": w.loop["mlflow_run_id"],
        "val": state.val,
        "data": w.loop["data_tags"],
    }
    with tempfile.TemporaryDirectory(prefix="tcm-ckpt-") as tmp:
        save_checkpoint(
            tmp, w.model, w.cfg.tcm_config(), meta=meta, experiment=w.loop["cfg"], optimizer=w.optimizer, scaler=w.scaler
        )
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)


def _print_epoch(name: str, epoch: int, E: int, metrics: Mapping[str, float]) -> None:
    parts = [f"loss {metrics.get('train/loss', math.nan):.4f}", f"{metrics.get('train/images_per_s', 0):.1f} img/s"]
    if "val/accuracy" in metrics:
        parts.append(f"val accuracy {metrics['val/accuracy']:.4f} (1-NED {metrics['val/one_minus_ned']:.4f})")
    if "val/hmean" in metrics:
        parts.append(
            f"val hmean {metrics['val/hmean']:.4f} (P {metrics['val/precision']:.4f} R {metrics['val/recall']:.4f})"
        )
    log.info("[tcm] %s epoch %d/%d: %s", name, epoch, E, ", ".join(parts))


# ------------------------------------------------------------------------------------------------ command


def train_command(
    config: Path = typer.Option(..., "--config", help="Experiment YAML (see jobs/configs/)."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config key, e.g. --set optim.lr=3e-4 (repeatable; value parsed as YAML)."
    ),
    name: str = typer.Option(None, "--name", help="Run name (overrides `name`); the same name + storage resumes."),
    no_register: bool = typer.Option(False, "--no-register", help="Log the model to MLflow but do not register it."),
    verbose: bool = typer.Option(
        False, "--verbose", help="Show Ray's own logs on the console (default: logs/train-<name>.log; always in a Ray job)."
    ),
) -> None:
    """Train a TCM detector or a CLIP4STR recogniser (model.kind) on Ray Train; started again with the same
    name + storage, it resumes."""
    from pipelines.console import quiet_console

    overrides = list(set_) + ([f"name={name}"] if name else [])
    try:
        cfg = load_config(config, overrides)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    # inside a submitted Ray job the job's log is the record (`ray job logs`): nothing is redirected there
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    log_file = None if verbose or in_job else Path("logs") / f"train-{cfg.name}.log"
    try:
        with quiet_console(log_file) as console:
            tracking_uri = registry.absolute_tracking_uri(cfg.mlflow.resolved_tracking_uri())
            key = registry.run_key(cfg.name, with_absolute_paths(cfg).train.storage_path)
            progress = tracking.training_progress(tracking_uri, cfg.mlflow.experiment, key, cfg.train.epochs)
            with console.stage(f"train {cfg.name}: {cfg.train.num_workers} worker(s) x {cfg.train.epochs} epochs", progress):
                outcome = run_training(cfg, register=not no_register)
    except (ConfigError, storage.StorageError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    summary = {
        "mlflow_run_id": outcome.run_id,
        "tracking_uri": outcome.tracking_uri,
        "resumed": outcome.resumed,
        "checkpoint": outcome.checkpoint,
        "model_uri": outcome.model_uri,
        "model_version": outcome.model_version,
        "metrics": {k: v for k, v in outcome.metrics.items() if isinstance(v, int | float | str)},
    }
    typer.echo(json.dumps(summary, indent=2))
