"""Sweeps with Ray Tune over Ray Train: one TorchTrainer per trial, ASHA on validation hmean, nested MLflow runs.

    driver: MLflow parent run (found again by key on a restart) -> Tuner(function trainable, ASHA on val/hmean)
    trial:  cfg + the trial's choices -> build_trainer(cfg, parent_run_id=…, callbacks=[TuneReportCallback()])
            -> fit; the run is named `<name>-trial-<trial id>` so a retried trial resumes its own Train run;
            with `train.init_from` every trial fine-tunes the same model (contexts re-initialised where the
            prompt count differs: pipelines.train.fit_prompt_count)
    after:  the best finished trial's model is registered with the alias; the parent gets val/hmean of the
            best, its params as `best.*` tags, and the comparison (table + parallel coordinates, sweep_report)

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

from pipelines import registry, resources, tracking
from pipelines.config import ConfigError, ExperimentConfig, load_config

log = logging.getLogger(__name__)

SCORE = "val/score"  # what the training loop reports as the task's primary validation metric; Tune ranks by it


def search_space(cfg: ExperimentConfig) -> dict[str, Any]:
    """The paper's study: number of learnable prompts, image/text encoder LR factors (0 = frozen), base LR, the
    auxiliary (instance-language matching) loss weight. A range with equal ends is that one value."""
    from ray import tune

    t = cfg.tune

    def log_range(lo: float, hi: float) -> Any:
        return lo if lo == hi else tune.loguniform(lo, hi)

    return {
        "num_prompts": tune.choice(list(t.num_prompts)),
        "image_encoder_lr_factor": log_range(*t.image_encoder_lr_factor),
        "text_encoder_lr_factor": tune.choice(list(t.text_encoder_lr_factor)),
        "lr": log_range(*t.lr),
        "aux_loss_weight": tune.choice(list(t.aux_loss_weight)),
    }


PARAMS = ("num_prompts", "image_encoder_lr_factor", "text_encoder_lr_factor", "lr", "aux_loss_weight")


def trial_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's choices as dotted config keys."""
    return {
        "model.tcm.num_prompts": int(params["num_prompts"]),
        "optim.image_encoder_lr_factor": float(params["image_encoder_lr_factor"]),
        "optim.text_encoder_lr_factor": float(params["text_encoder_lr_factor"]),
        "optim.lr": float(params["lr"]),
        "model.tcm.aux_loss_weight": float(params["aux_loss_weight"]),
    }


def trial_name(sweep_name: str, trial_id: str) -> str:
    return f"{sweep_name}-trial-{trial_id}"


def run_trial(params: dict[str, Any], *, base: dict[str, Any], parent_run_id: str) -> None:
    """Tune function trainable: build and fit this trial's TorchTrainer (it reports through TuneReportCallback)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.train import build_trainer

    trial_id = ray.tune.get_context().get_trial_id()
    from pipelines.tasks import task_for

    cfg = ExperimentConfig.model_validate(base)
    choices = task_for(cfg.tcm_config()).trial_overrides(params)  # detection: trial_overrides above
    cfg = cfg.with_overrides({**choices, "name": trial_name(cfg.name, trial_id)}, source="tune trial")
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
    val_hmean: float  # the task's primary validation metric (reported as val/score): hmean, a recogniser's word accuracy
    epochs: int
    model_uri: str | None


@dataclasses.dataclass
class SweepOutcome:
    parent_run_id: str
    tracking_uri: str
    trials: list[TrialSummary]
    best: TrialSummary | None
    model_version: str | None


def run_sweep(cfg: ExperimentConfig, *, register: bool = True, quiet: bool = False) -> SweepOutcome:
    """Run the sweep `cfg.tune` over `cfg`; one MLflow parent run with a child run per trial."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from pipelines.tasks import task_for
    from pipelines.train import check_storage, data_hashes, init_ray, resolve_storage, with_absolute_paths

    if not ray.is_initialized():
        init_ray()  # the endpoint variables reach every actor (train.init_ray)
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
    tracking.log_datasets(tracking_uri, parent_id, [*cfg.data.train, *cfg.data.val])
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
        param_space=task_for(cfg.tcm_config()).search_space(cfg),  # detection: search_space above
        tune_config=tune.TuneConfig(
            metric=SCORE,  # the task's primary validation metric (val/hmean for detection), reported as val/score
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
        run_config=tune.RunConfig(
            name=sweep_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            verbose=0 if quiet else 1,  # quiet: Tune's status tables go to the log file, not the console
        ),
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
    metric = f"val/{task_for(cfg.tcm_config()).primary_metric}"  # val/hmean, or val/accuracy for a recogniser
    if best is not None:
        parent.metrics({metric: best.val_hmean}, step=0)  # the sweep's result, comparable across sweeps
        parent.tags({"best.trial_id": best.trial_id, "best.mlflow_run_id": best.mlflow_run_id or ""})
        parent.tags({f"best.{k}": v for k, v in best.params.items()})
        if register and cfg.mlflow.registered_model:
            version, _ = registry.register_promoted(
                tracking_uri, best.model_uri, cfg.mlflow.registered_model, cfg.mlflow.alias,
                {"run_id": best.mlflow_run_id or "", "sweep_run_id": parent_id},
                run_id=best.mlflow_run_id, hmean=best.val_hmean, floor=cfg.mlflow.promote_min_hmean,
                what=f"validation {metric.removeprefix('val/')}",
            )
    with tempfile.TemporaryDirectory(prefix="tcm-sweep-") as tmp:
        from pipelines.sweep_report import write_comparison

        path = Path(tmp) / "trials.json"
        path.write_text(json.dumps([dataclasses.asdict(s) for s in trials], indent=2, default=str))
        parent.artifact(path)
        rows = [{"trial_id": s.trial_id, "epochs": s.epochs, **s.params, metric: s.val_hmean} for s in trials]
        if rows:
            write_comparison(rows, sorted(trials[0].params), Path(tmp) / "comparison", metric)
            parent.artifacts(Path(tmp) / "comparison", "comparison")
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
        params = dict(result.config)  # the sampled search space of the task
        score = float(metrics.get(SCORE, 0.0))
        out.append(TrialSummary(trial_id, run_id, params, score, int(metrics.get("epoch", 0)), model_uri))
    return sorted(out, key=lambda s: s.val_hmean, reverse=True)


def trial_table(trials: list[TrialSummary], metric: str = "hmean") -> list[str]:
    """The trials as console lines, best first (tcm tune and tcm demo print it): one column per swept key."""
    keys = sorted(trials[0].params) if trials else []
    heads = {k: k.replace("_lr_factor", " lr x").replace("_", " ") for k in keys}
    widths = {k: max(8, len(heads[k])) for k in keys}
    lines = [" ".join([f"{'trial':<22}", *(f"{heads[k]:>{widths[k]}}" for k in keys), f"{'epochs':>6}", f"val {metric}"])]
    for s in trials:
        cells = [f"{_fmt(s.params[k]):>{widths[k]}}" for k in keys]
        lines.append(" ".join([f"{s.trial_id:<22}", *cells, f"{s.epochs:>6}", f"{s.val_hmean:>{4 + len(metric)}.4f}"]))
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def tune_command(
    config: Path = typer.Option(..., "--config", help="Experiment YAML; its `tune` section defines the sweep."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set tune.num_samples=4 (repeatable)."),
    num_samples: int = typer.Option(None, "--num-samples", min=1, help="Trials to run (overrides tune.num_samples)."),
    no_register: bool = typer.Option(False, "--no-register", help="Do not register the best trial's model."),
) -> None:
    """Sweep a detector's prompts and learning-rate factors, or a recogniser's freeze depth, decoder LR factor and
    permutation count, with Ray Tune (ASHA); the best trial's model is registered."""
    from pipelines.tasks import task_for

    overrides = list(set_) + ([f"tune.num_samples={num_samples}"] if num_samples else [])
    try:
        cfg = load_config(config, overrides)
        outcome = run_sweep(cfg, register=not no_register)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    for line in trial_table(outcome.trials, task_for(cfg.tcm_config()).primary_metric):
        typer.echo(line)
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
