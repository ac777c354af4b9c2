"""Sweeps with Ray Tune over Ray Train: one TorchTrainer per trial, ASHA on validation hmean, nested MLflow runs.

    driver: MLflow parent run (found again by key on a restart) -> Tuner(function trainable, ASHA)
    trial:  cfg + the trial's choices -> build_trainer(cfg, parent_run_id=…, callbacks=[TuneReportCallback()])
            -> fit; the run is named `<name>-trial-<trial id>` so a retried trial resumes its own Train run
    after:  the best finished trial's model is registered with the alias; the parent gets the summary

`Tuner(TorchTrainer)` is deprecated in Train V2; the function trainable here only drives its TorchTrainer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import typer

from pipelines import registry, resources
from pipelines.config import ConfigError, ExperimentConfig, load_config

log = logging.getLogger(__name__)


def search_space(cfg: ExperimentConfig) -> dict[str, Any]:
    """The paper's study: number of learnable prompts, image/text encoder LR factors (0 = frozen), base LR."""
    from ray import tune

    t = cfg.tune
    return {
        "num_prompts": tune.choice(list(t.num_prompts)),
        "image_encoder_lr_factor": tune.loguniform(*t.image_encoder_lr_factor),
        "text_encoder_lr_factor": tune.choice(list(t.text_encoder_lr_factor)),
        "lr": tune.loguniform(*t.lr),
    }


def trial_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's choices as dotted config keys."""
    return {
        "model.tcm.num_prompts": int(params["num_prompts"]),
        "optim.image_encoder_lr_factor": float(params["image_encoder_lr_factor"]),
        "optim.text_encoder_lr_factor": float(params["text_encoder_lr_factor"]),
        "model.tcm.train_text_encoder": float(params["text_encoder_lr_factor"]) > 0,
        "optim.lr": float(params["lr"]),
    }


def trial_name(sweep_name: str, trial_id: str) -> str:
    return f"{sweep_name}-trial-{trial_id}"


def run_trial(params: dict[str, Any], *, base: dict[str, Any], parent_run_id: str) -> None:
    """Tune function trainable: build and fit this trial's TorchTrainer (it reports through TuneReportCallback)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.train import build_trainer

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = ExperimentConfig.model_validate(base)
    cfg = cfg.with_overrides({**trial_overrides(params), "name": trial_name(cfg.name, trial_id)}, source="tune trial")
    built = build_trainer(
        cfg,
        parent_run_id=parent_run_id,
        callbacks=[TuneReportCallback()],
        run_tags={"tcm.trial_id": trial_id, "tcm.sweep": base["name"]},
    )
    try:
        built.trainer.fit()
    except BaseException:
        registry.finish_run(built.tracking_uri, built.run_id, "FAILED")
        raise
    registry.finish_run(built.tracking_uri, built.run_id, "FINISHED")


@dataclasses.dataclass
class TrialSummary:
    trial_id: str
    mlflow_run_id: str | None
    params: dict[str, Any]
    val_hmean: float
    epochs: int
    model_uri: str | None


@dataclasses.dataclass
class SweepOutcome:
    parent_run_id: str
    tracking_uri: str
    trials: list[TrialSummary]
    best: TrialSummary | None
    model_version: str | None


def run_sweep(cfg: ExperimentConfig, *, register: bool = True) -> SweepOutcome:
    """Run the sweep `cfg.tune` over `cfg`; one MLflow parent run with a child run per trial."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from pipelines.train import check_storage, data_hashes, resolve_storage, with_absolute_paths

    if not ray.is_initialized():
        ray.init()
    cfg = with_absolute_paths(cfg)
    if not cfg.data.val:
        raise ConfigError("data.val: a sweep ranks trials by validation hmean; configure a validation set")
    sweep_name = f"{cfg.name}-sweep"
    check_storage(cfg.train.storage_path, sweep_name)
    tracking_uri = registry.absolute_tracking_uri(cfg.mlflow.resolved_tracking_uri())
    experiment_id = registry.ensure_experiment(
        tracking_uri, cfg.mlflow.experiment, registry.default_artifact_location(cfg.mlflow, cfg.train.storage_path),
        configured=cfg.mlflow.artifact_location is not None,
    )
    parent_id, _ = registry.get_or_create_run(
        tracking_uri,
        experiment_id,
        registry.run_key(f"sweep:{cfg.name}", cfg.train.storage_path),
        sweep_name,
        tags={"tcm.kind": "sweep", **data_hashes(cfg)},
    )
    parent = registry.RunLogger(tracking_uri, parent_id)
    parent.params({**cfg.flat_params(), "sweep.space": json.dumps(cfg.tune.model_dump(mode="json"))})

    storage_path, filesystem = resolve_storage(cfg.train.storage_path)
    t = cfg.tune
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=cfg.model_dump(mode="json"), parent_run_id=parent_id),
        {"CPU": t.driver_cpus},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(cfg),
        tune_config=tune.TuneConfig(
            metric="val_hmean",
            mode="max",
            num_samples=t.num_samples,
            # the limit lives on the generator: Tune ignores max_concurrent_trials for a given generator instance
            search_alg=BasicVariantGenerator(random_state=t.seed, max_concurrent=t.max_concurrent),
            # max_t one past the last epoch: ASHA stops trials at its rungs, never at their final report (a stop
            # there would interrupt a trial that is finishing and leave its MLflow run marked as failed)
            scheduler=ASHAScheduler(
                time_attr="epoch",
                max_t=cfg.train.epochs + 1,
                grace_period=t.grace_period,
                reduction_factor=t.reduction_factor,
            ),
        ),
        run_config=tune.RunConfig(name=sweep_name, storage_path=storage_path, storage_filesystem=filesystem),
    )
    try:  # one trial (its driver + its workers) must fit, or Tune would wait for ever
        resources.require(resources.training_ask(cfg, f"sweep {sweep_name!r}", extra_cpus=t.driver_cpus))
        grid = tuner.fit()
    except BaseException:
        registry.finish_run(tracking_uri, parent_id, "FAILED")
        raise

    trials = _summaries(grid, tracking_uri, experiment_id, cfg)
    finished = [s for s in trials if s.model_uri]
    best = max(finished, key=lambda s: s.val_hmean) if finished else None
    version = None
    if best is not None:
        parent.metrics({"best/val_hmean": best.val_hmean}, step=0)
        parent.tags({"best.trial_id": best.trial_id, "best.mlflow_run_id": best.mlflow_run_id or ""})
        parent.params({f"best.{k}": v for k, v in best.params.items()})
        if register and cfg.mlflow.registered_model:
            version, _ = registry.register_promoted(
                tracking_uri, best.model_uri, cfg.mlflow.registered_model, cfg.mlflow.alias,
                {"run_id": best.mlflow_run_id or "", "sweep_run_id": parent_id},
                run_id=best.mlflow_run_id, hmean=best.val_hmean, floor=cfg.mlflow.promote_min_hmean,
            )
    with tempfile.TemporaryDirectory(prefix="tcm-sweep-") as tmp:
        path = Path(tmp) / "trials.json"
        path.write_text(json.dumps([dataclasses.asdict(s) for s in trials], indent=2, default=str))
        parent.artifact(path)
    registry.finish_run(tracking_uri, parent_id, "FINISHED")
    return SweepOutcome(parent_id, tracking_uri, trials, best, version)


def _summaries(grid: Any, tracking_uri: str, experiment_id: str, cfg: ExperimentConfig) -> list[TrialSummary]:
    """One summary per trial; children that ASHA stopped early are marked KILLED in MLflow (not FAILED)."""
    out = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = str(metrics.get("trial_id") or Path(result.path).name)
        key = registry.run_key(trial_name(cfg.name, trial_id), cfg.train.storage_path)
        run_id = registry.find_run(tracking_uri, experiment_id, key)
        model_uri = registry.run_model_uri(tracking_uri, run_id) if run_id else None
        if run_id and model_uri is None and result.error is None:
            registry.finish_run(tracking_uri, run_id, "KILLED")  # stopped early by ASHA, not broken
        params = {k: result.config[k] for k in ("num_prompts", "image_encoder_lr_factor", "text_encoder_lr_factor", "lr")}
        out.append(
            TrialSummary(trial_id, run_id, params, float(metrics.get("val_hmean", 0.0)), int(metrics.get("epoch", 0)), model_uri)
        )
    return sorted(out, key=lambda s: s.val_hmean, reverse=True)


def tune_command(
    config: Path = typer.Option(..., "--config", help="Experiment YAML; its `tune` section defines the sweep."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set tune.num_samples=4 (repeatable)."),
    num_samples: int = typer.Option(None, "--num-samples", min=1, help="Trials to run (overrides tune.num_samples)."),
    no_register: bool = typer.Option(False, "--no-register", help="Do not register the best trial's model."),
) -> None:
    """Sweep prompts and learning-rate factors with Ray Tune (ASHA); the best trial's model is registered."""
    overrides = list(set_) + ([f"tune.num_samples={num_samples}"] if num_samples else [])
    try:
        cfg = load_config(config, overrides)
        outcome = run_sweep(cfg, register=not no_register)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{'trial':<24} {'prompts':>7} {'img lr x':>9} {'txt lr x':>9} {'lr':>9} {'epochs':>6} {'val hmean':>9}")
    for s in outcome.trials:
        p = s.params
        typer.echo(
            f"{s.trial_id:<24} {p['num_prompts']:>7} {p['image_encoder_lr_factor']:>9.3g} "
            f"{p['text_encoder_lr_factor']:>9.3g} {p['lr']:>9.2e} {s.epochs:>6} {s.val_hmean:>9.4f}"
        )
    best = outcome.best
    typer.echo(
        json.dumps(
            {
                "parent_run_id": outcome.parent_run_id,
                "tracking_uri": outcome.tracking_uri,
                "best_trial": best.trial_id if best else None,
                "best_val_hmean": best.val_hmean if best else None,
                "model_version": outcome.model_version,
            },
            indent=2,
        )
    )
