"""`tcm demo` (= `make demo`): the whole product on one machine with embedded defaults.

    local Ray (private instance) -> synthesise a training set and a held-out split (tcm.data.synth)
    -> ingest them and the ICDAR 2015 fixture (../shared/fixtures/icdar2015) into Parquet shards
    -> train tiny TCM-DB on 2 Ray Train workers (checkpoints under the working folder, MLflow in sqlite)
    -> evaluate on the held-out synthetic split and the IC15 fixture (Ray Data actor pool)
    -> a sweep that fine-tunes the model just trained (train.init_from) over the prompt count, the image-encoder
       LR factor and the auxiliary-loss weight (Ray Tune + ASHA on val/hmean; MLflow parent + child runs, the
       parent holding a comparison table and a parallel-coordinates plot)
    -> a table, `demo_summary.json`, and the `mlflow ui` command to look at it all

Everything lands in the working folder (default `demo-work/`); running it again resumes the same runs. The
console shows one line per stage; Ray's own output goes to `demo.log` there (`--verbose`: to the console).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import typer

from pipelines.config import DatasetRef, ExperimentConfig, load_config
from pipelines.console import Console, quiet_console

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "jobs" / "configs" / "tiny_cpu.yaml"
IC15_FIXTURE = REPO.parent / "shared" / "fixtures" / "icdar2015"
SYNTH_FORMAT = "icdar2015"  # quadrilaterals: what tiny TCM-DB in quad mode is scored on
SYNTH_SIZE = 256  # px: the generator's word sizes are tuned at 256 x 256
# held-out images are tested at 192 px (0.75x): the scale tiny TCM-DB sees words at in training, where the DB
# crop resizes a region of a 0.5-1.5x image to 128 px; at full size it splits wide words at character gaps
VAL_SIZE = 192


@dataclass
class DemoPlan:
    """The demo's knobs: sized so the whole run fits in 10 minutes on 2 cores."""

    workdir: Path
    train_images: int = 512  # synthetic training images
    val_images: int = 48  # held-out synthetic images (another split of the generator: never trained on)
    epochs: int = 12  # 768 steps of 8: tiny TCM-DB from random weights passes hmean 0.8 at ~700
    val_every: int = 4  # epochs: each validation pass costs a few seconds of the budget
    sweep: bool = True
    # the sweep fine-tunes the trained model: each trial a short run from weights that already score ~0.8, so
    # the trials' validation hmeans differ by what they change (a new prompt count re-initialises the contexts)
    sweep_trials: int = 4  # ASHA stops the weaker half at the first rung: ~3 full trials' time
    sweep_epochs: int = 2  # one ASHA rung (grace period 1) before the last epoch
    sweep_steps: int = 24  # optimiser steps per sweep epoch, a validation after each
    seed: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def prepare_data(plan: DemoPlan, note=print) -> dict[str, DatasetRef | None]:
    """Synthesise and ingest the training set and held-out split; ingest the IC15 fixture when present."""
    from pipelines.ingest import ingest
    from tcm.data.synth import write_dataset

    raw, data = plan.workdir / "raw", plan.workdir / "data"
    refs: dict[str, DatasetRef | None] = {}
    for split, n in (("train", plan.train_images), ("val", plan.val_images)):
        if not (data / "synth" / "manifest.json").is_file() or split not in _splits(data / "synth"):
            write_dataset(SYNTH_FORMAT, raw / "synth", n=n, seed=plan.seed, split=split, height=SYNTH_SIZE, width=SYNTH_SIZE)
            ingest(SYNTH_FORMAT, str(raw / "synth" / split), str(data / "synth"), split, dataset="synth", progress=note)
        refs[split] = DatasetRef(uri=str(data / "synth"), split=split)
    refs["ic15"] = None
    if IC15_FIXTURE.is_dir():
        if "test" not in _splits(data / "ic15"):
            ingest("icdar2015", str(IC15_FIXTURE), str(data / "ic15"), "test", progress=note)
        refs["ic15"] = DatasetRef(uri=str(data / "ic15"), split="test")
    else:
        note(f"IC15 fixture not found at {IC15_FIXTURE}: skipping the real-data evaluation")
    return refs


def _splits(folder: Path) -> set[str]:
    manifest = folder / "manifest.json"
    return set(json.loads(manifest.read_text()).get("splits", {})) if manifest.is_file() else set()


def demo_config(plan: DemoPlan, refs: dict[str, DatasetRef | None]) -> ExperimentConfig:
    """tiny_cpu.yaml pointed at the demo's data, storage and MLflow store."""
    work = plan.workdir.resolve()
    return load_config(
        TINY_CONFIG,
        [
            "name=demo-tiny-db",
            f"data.train=[{{uri: '{refs['train'].uri}', split: train}}]",
            f"data.val=[{{uri: '{refs['val'].uri}', split: val}}]",
            f"data.val_long_side={VAL_SIZE}",
            f"data.val_short_side={VAL_SIZE}",
            f"data.val_canvas={VAL_SIZE}",
            # mean probability a box needs (DB default 0.3), chosen on a calibration split of the generator (split
            # "calib", 96 images at 192 px: neither trained nor tested on) with the demo's 12-epoch model: hmean
            # 0.808 at 0.3, 0.834 at 0.4, 0.753 at 0.5 (a briefly trained tiny model leaves faint blobs on clutter)
            "model.head.box_thresh=0.4",
            # one trainer worker with a whole core and the augmentation on the other: on 2 cores twice the
            # optimiser steps of two half-core DDP workers in the same time (tests cover 2 workers)
            "train.num_workers=1",
            "train.cpus_per_worker=1.0",
            "data.cpus_per_task=1.0",
            f"train.epochs={plan.epochs}",
            f"train.val_every={plan.val_every}",
            f"train.checkpoint_every={plan.val_every}",
            f"train.storage_path={work / 'runs'}",
            f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
            "mlflow.experiment=tcm-demo",
            f"data.seed={plan.seed}",
        ],
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sweep_config(cfg: ExperimentConfig, plan: DemoPlan, init_from: str) -> ExperimentConfig:
    """The demo sweep: short fine-tuning runs from the model just trained, one at a time."""
    return cfg.with_overrides(
        {
            "name": "demo-sweep",
            "train.init_from": init_from,
            "train.epochs": plan.sweep_epochs,
            "train.val_every": 1,  # ASHA ranks trials by a validation at every rung
            "train.checkpoint_every": plan.sweep_epochs,
            "train.num_workers": 1,
            "train.num_overlays": 0,
            "train.steps_per_epoch": plan.sweep_steps,
            # one trial at a time: driver (0.1) + trainer worker (1 CPU) + augmentation (0.5) fit in 2 CPUs.
            # Both at once on half-core workers: 383 s vs 188 s for the sweep on a loaded 2-core machine,
            # 131 s vs 147 s on an idle one; too little to gain for the risk
            "data.cpus_per_task": 0.5,
            "tune.num_samples": plan.sweep_trials,
            "tune.num_prompts": [4, 8],  # 4 = the trained model's; 8 re-initialises the contexts
            "tune.image_encoder_lr_factor": [0.1, 1.0],  # log-uniform: TCM's 0.1 up to the from-scratch 1.0
            "tune.text_encoder_lr_factor": [0.0],  # frozen, as trained above
            "tune.aux_loss_weight": [0.5, 1.0, 2.0],  # around the paper's lambda = 1
            "tune.lr": [1.0e-3, 1.0e-3],  # fine-tuning: a third of the from-scratch 3e-3, poly-decayed per trial
            "tune.grace_period": 1,
            "tune.reduction_factor": 2,
            "mlflow.alias": "sweep-best",  # `champion` stays on the model trained above
        }
    )


def run_demo(plan: DemoPlan, console: Console | None = None) -> dict:
    import ray
    import ray.data

    from pipelines import registry, tracking
    from pipelines.evaluate import run_evaluation
    from pipelines.train import run_training
    from pipelines.tune import run_sweep

    console = console or Console(sys.stdout)
    plan.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Ray Train's preemption watcher polls for draining nodes from one more actor process per training run; one
    # machine has nothing to drain, and on 2 cores each process start costs seconds (one per training run here)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    if not ray.is_initialized():
        # a private local instance sized to this machine: never attach to a cluster someone else started here.
        # With its dashboard, on a port we pick and name to every process: when ASHA stops a trial, Ray Train's
        # placement-group cleaner asks the state API (the dashboard) whether the trial's controller died and
        # frees its CPU. Without it (or when it finds another Ray instance on the machine first) the stopped
        # trial's worker CPU stays reserved and the next trial waits for it forever.
        port = _free_port()
        ray.init(
            address="local",
            num_cpus=max(2, os.cpu_count() or 2),
            include_dashboard=True,
            dashboard_port=port,
            runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}},
        )
    if console.log is not None:
        ray.data.DataContext.get_current().enable_progress_bars = False  # redrawn bars would fill the log

    def stage(title: str, poll=None):
        return console.stage(f"[demo] {title}", poll)

    with stage("data: synthesise + ingest") as t:
        refs = prepare_data(plan)
    plan.timings["data"] = t["elapsed_s"]
    cfg = demo_config(plan, refs)
    tracking_uri = registry.absolute_tracking_uri(cfg.mlflow.resolved_tracking_uri())
    key = registry.run_key(cfg.name, cfg.train.storage_path)
    progress = tracking.training_progress(tracking_uri, cfg.mlflow.experiment, key, cfg.train.epochs)
    with stage(f"train tiny TCM-DB, {cfg.train.num_workers} worker x {cfg.train.epochs} epochs", progress) as t:
        trained = run_training(cfg)
    plan.timings["train"] = t["elapsed_s"]
    model_uri = f"models:/{cfg.mlflow.registered_model}/{trained.model_version}" if trained.model_version else trained.checkpoint
    results: dict[str, dict] = {}
    # the held-out split at VAL_SIZE; the IC15 fixture (1280x720) at short side 736 on a 1280 canvas
    ic15_scale = {"data.val_long_side": 1280, "data.val_short_side": 736, "data.val_canvas": 1280}
    for name, ref, eval_cfg in (
        ("synthetic held-out", refs["val"], cfg),
        ("ICDAR 2015 fixture", refs["ic15"], cfg.with_overrides(ic15_scale)),
    ):
        if ref is None:
            continue
        with stage(f"evaluate on {name}") as t:
            outcome = run_evaluation(
                model_uri,
                [ref],
                eval_cfg,
                out_dir=plan.workdir / "eval" / name.split()[0].lower(),
                num_overlays=2,
                run_name=f"evaluate {name}",
                parent_run_id=trained.run_id,
            )
        plan.timings[f"evaluate {name}"] = t["elapsed_s"]
        results[name] = outcome.metrics
    sweep = None
    if plan.sweep:
        sweep_cfg = sweep_config(cfg, plan, model_uri)
        sweep_key = registry.run_key(f"sweep:{sweep_cfg.name}", sweep_cfg.train.storage_path)
        progress = tracking.sweep_progress(tracking_uri, sweep_cfg.mlflow.experiment, sweep_key, plan.sweep_trials)
        title = f"sweep: {plan.sweep_trials} fine-tuning trials over prompts, image LR factor, aux weight (Tune, ASHA)"
        with stage(title, progress) as t:
            sweep = run_sweep(sweep_cfg, quiet=console.log is not None)
        plan.timings["sweep"] = t["elapsed_s"]
    held_out = results["synthetic held-out"]
    summary = {
        "hmean": held_out["test/hmean"],  # the detection figure under its first name (scripts read it)
        "test/hmean": held_out["test/hmean"],
        "test/precision": held_out["test/precision"],
        "test/recall": held_out["test/recall"],
        "ic15/test/hmean": results.get("ICDAR 2015 fixture", {}).get("test/hmean"),
        "mlflow_run_id": trained.run_id,
        "tracking_uri": trained.tracking_uri,
        "model_uri": model_uri,
        "checkpoint": trained.checkpoint,
        "sweep_parent_run_id": sweep.parent_run_id if sweep else None,
        "sweep/val/hmean": {t.trial_id: t.val_hmean for t in sweep.trials} if sweep else None,
        "sweep/best/val/hmean": sweep.best.val_hmean if sweep and sweep.best else None,
        "log": str(console.log) if console.log else None,
        "timings_s": {**plan.timings, "total": round(time.perf_counter() - started, 1)},
    }
    (plan.workdir / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    _print_table(summary, results, sweep, plan, console)
    return summary


def _print_table(summary: dict, results: dict[str, dict], sweep, plan: DemoPlan, console: Console) -> None:
    from pipelines.tune import trial_table

    say = console.say
    say("")
    say(f"{'evaluation':<24} {'images':>6} {'precision':>9} {'recall':>7} {'hmean':>7}")
    for name, m in results.items():
        say(
            f"{name:<24} {int(m['test/images']):>6} {m['test/precision']:>9.3f} {m['test/recall']:>7.3f} "
            f"{m['test/hmean']:>7.3f}"
        )
    if sweep is not None:
        say("")
        for line in trial_table(sweep.trials):
            say(line)
        say(
            f"(each trial: {plan.sweep_epochs} x {plan.sweep_steps} steps fine-tuning the model above; ASHA stops "
            "the weaker ones after epoch 1; the parent run holds comparison/parallel_coordinates.png)"
        )
    say("")
    say(f"demo finished in {summary['timings_s']['total']:.0f} s; summary: {plan.workdir / 'demo_summary.json'}")
    if summary["log"]:
        say(f"Ray's output: {summary['log']} (--verbose shows it here)")
    say(f"MLflow run {summary['mlflow_run_id']}; look at everything with:")
    say(f"  .venv/bin/mlflow ui --backend-store-uri {summary['tracking_uri']}")


def demo_command(
    workdir: Path = typer.Option(Path("demo-work"), "--workdir", help="Working folder for data, runs, MLflow and the summary."),
    train_images: int = typer.Option(512, "--train-images", min=8, help="Synthetic training images to generate."),
    val_images: int = typer.Option(48, "--val-images", min=4, help="Held-out synthetic images to evaluate on."),
    epochs: int = typer.Option(12, "--epochs", min=1, help="Training epochs of tiny TCM-DB."),
    no_sweep: bool = typer.Option(False, "--no-sweep", help="Skip the fine-tuning sweep (Ray Tune, ASHA)."),
    verbose: bool = typer.Option(False, "--verbose", help="Show Ray's own logs and progress bars (default: WORKDIR/demo.log)."),
) -> None:
    """Run the whole pipeline on this machine: synthesise, ingest, train, evaluate, sweep; MLflow in sqlite."""
    plan = DemoPlan(workdir.resolve(), train_images=train_images, val_images=val_images, epochs=epochs, sweep=not no_sweep)
    with warnings.catch_warnings(), quiet_console(None if verbose else plan.workdir / "demo.log") as console:
        warnings.filterwarnings("ignore", message="No CLIP weights given")  # said once below instead
        console.say("[demo] tiny TCM-DB starts from random weights (no CLIP weights offline): the demo shows the machinery")
        run_demo(plan, console)
