"""`tcm demo` (= `make demo`): the whole product on one machine with embedded defaults.

    local Ray (private instance) -> synthesise a training set and a held-out split (tcm.data.synth)
    -> ingest them and the ICDAR 2015 fixture (../shared/fixtures/icdar2015) into Parquet shards
    -> train tiny TCM-DB on 2 Ray Train workers (checkpoints under the working folder, MLflow in sqlite)
    -> evaluate on the held-out synthetic split and the IC15 fixture (Ray Data actor pool)
    -> a two-trial sweep (Ray Tune + ASHA, MLflow parent + child runs)
    -> a table, `demo_summary.json`, and the `mlflow ui` command to look at it all

Everything lands in the working folder (default `demo-work/`); running it again resumes the same runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import typer

from pipelines.config import DatasetRef, ExperimentConfig, load_config

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
    sweep_epochs: int = 2  # each sweep trial is a short run: the sweep shows the machinery, not a search
    sweep_steps: int = 16  # optimiser steps per sweep epoch (ASHA still sees one validation per epoch)
    seed: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def say(message: str) -> None:
    typer.echo(f"[demo] {message}")


@contextlib.contextmanager
def _timed(plan: DemoPlan, name: str) -> Iterator[None]:
    """Announce a stage, time it into plan.timings, and say how long it took."""
    say(f"{name} ...")
    start = time.perf_counter()
    yield
    plan.timings[name] = round(time.perf_counter() - start, 1)
    say(f"{name}: done in {plan.timings[name]:.0f} s")


def prepare_data(plan: DemoPlan) -> dict[str, DatasetRef | None]:
    """Synthesise and ingest the training set and held-out split; ingest the IC15 fixture when present."""
    from pipelines.ingest import ingest
    from tcm.data.synth import write_dataset

    raw, data = plan.workdir / "raw", plan.workdir / "data"
    refs: dict[str, DatasetRef | None] = {}
    for split, n in (("train", plan.train_images), ("val", plan.val_images)):
        if not (data / "synth" / "manifest.json").is_file() or split not in _splits(data / "synth"):
            write_dataset(SYNTH_FORMAT, raw / "synth", n=n, seed=plan.seed, split=split, height=SYNTH_SIZE, width=SYNTH_SIZE)
            ingest(SYNTH_FORMAT, str(raw / "synth" / split), str(data / "synth"), split, dataset="synth", progress=say)
        refs[split] = DatasetRef(uri=str(data / "synth"), split=split)
    refs["ic15"] = None
    if IC15_FIXTURE.is_dir():
        if "test" not in _splits(data / "ic15"):
            ingest("icdar2015", str(IC15_FIXTURE), str(data / "ic15"), "test", progress=say)
        refs["ic15"] = DatasetRef(uri=str(data / "ic15"), split="test")
    else:
        say(f"IC15 fixture not found at {IC15_FIXTURE}: skipping the real-data evaluation")
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


def run_demo(plan: DemoPlan) -> dict:
    import ray

    from pipelines.evaluate import run_evaluation
    from pipelines.train import run_training
    from pipelines.tune import run_sweep

    plan.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Ray Train's preemption watcher polls for draining nodes from one more actor process per training run; one
    # machine has nothing to drain, and on 2 cores each process start costs seconds (3 training runs here)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    if not ray.is_initialized():
        # a private local instance sized to this machine: never attach to a cluster someone else started here
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False)
    with _timed(plan, "data: synthesise + ingest"):
        refs = prepare_data(plan)
    cfg = demo_config(plan, refs)
    with _timed(plan, f"train tiny TCM-DB, {cfg.train.num_workers} workers x {cfg.train.epochs} epochs"):
        trained = run_training(cfg)
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
        with _timed(plan, f"evaluate on {name}"):
            outcome = run_evaluation(
                model_uri,
                [ref],
                eval_cfg,
                out_dir=plan.workdir / "eval" / name.split()[0].lower(),
                num_overlays=2,
                run_name=f"evaluate {name}",
                parent_run_id=trained.run_id,
            )
        results[name] = outcome.metrics
    sweep = None
    if plan.sweep:
        sweep_cfg = cfg.with_overrides(
            {
                "name": "demo-sweep",
                "train.epochs": plan.sweep_epochs,
                "train.num_workers": 1,
                "train.num_overlays": 0,
                "train.steps_per_epoch": plan.sweep_steps,
                # one trial at a time: driver (0.1) + trainer worker (1 CPU) + augmentation (0.5) fit in 2 CPUs.
                # Both at once on half-core workers: 383 s vs 188 s for the sweep on a loaded 2-core machine,
                # 131 s vs 147 s on an idle one; too little to gain for the risk
                "data.cpus_per_task": 0.5,
                "tune.num_samples": 2,
                "mlflow.alias": "sweep-best",  # `champion` stays on the model trained above
            }
        )
        with _timed(plan, "sweep: 2 trials over prompts and learning-rate factors (Ray Tune, ASHA)"):
            sweep = run_sweep(sweep_cfg)
    summary = {
        "hmean": results["synthetic held-out"]["hmean"],
        "precision": results["synthetic held-out"]["precision"],
        "recall": results["synthetic held-out"]["recall"],
        "ic15_hmean": results.get("ICDAR 2015 fixture", {}).get("hmean"),
        "mlflow_run_id": trained.run_id,
        "tracking_uri": trained.tracking_uri,
        "model_uri": model_uri,
        "checkpoint": trained.checkpoint,
        "sweep_parent_run_id": sweep.parent_run_id if sweep else None,
        "sweep_best_val_hmean": sweep.best.val_hmean if sweep and sweep.best else None,
        "timings_s": {**plan.timings, "total": round(time.perf_counter() - started, 1)},
    }
    (plan.workdir / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    _print_table(summary, results, sweep, plan)
    return summary


def _print_table(summary: dict, results: dict[str, dict], sweep, plan: DemoPlan) -> None:
    typer.echo("")
    typer.echo(f"{'evaluation':<24} {'images':>6} {'precision':>9} {'recall':>7} {'hmean':>7}")
    for name, m in results.items():
        typer.echo(f"{name:<24} {int(m['images']):>6} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['hmean']:>7.3f}")
    if sweep is not None:
        typer.echo("")
        typer.echo(f"{'sweep trial':<24} {'prompts':>7} {'img lr x':>9} {'txt lr x':>9} {'val hmean':>9}")
        for t in sweep.trials:
            p = t.params
            typer.echo(
                f"{t.trial_id:<24} {p['num_prompts']:>7} {p['image_encoder_lr_factor']:>9.3g} "
                f"{p['text_encoder_lr_factor']:>9.3g} {t.val_hmean:>9.3f}"
            )
        typer.echo(
            f"(each trial: {plan.sweep_epochs} x {plan.sweep_steps} steps from random weights, far from the "
            f"{plan.epochs} epochs above: it shows Tune, ASHA and the MLflow parent/child runs, not a search)"
        )
    typer.echo("")
    typer.echo(f"demo finished in {summary['timings_s']['total']:.0f} s; summary: {plan.workdir / 'demo_summary.json'}")
    typer.echo(f"MLflow run {summary['mlflow_run_id']}; look at everything with:")
    typer.echo(f"  .venv/bin/mlflow ui --backend-store-uri {summary['tracking_uri']}")


def demo_command(
    workdir: Path = typer.Option(Path("demo-work"), "--workdir", help="Working folder for data, runs, MLflow and the summary."),
    train_images: int = typer.Option(512, "--train-images", min=8, help="Synthetic training images to generate."),
    val_images: int = typer.Option(48, "--val-images", min=4, help="Held-out synthetic images to evaluate on."),
    epochs: int = typer.Option(12, "--epochs", min=1, help="Training epochs of tiny TCM-DB."),
    no_sweep: bool = typer.Option(False, "--no-sweep", help="Skip the two-trial Ray Tune sweep."),
) -> None:
    """Run the whole pipeline on this machine: synthesise, ingest, train, evaluate, sweep; MLflow in sqlite."""
    plan = DemoPlan(workdir.resolve(), train_images=train_images, val_images=val_images, epochs=epochs, sweep=not no_sweep)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No CLIP weights given")  # said once below instead
        say("tiny TCM-DB starts from random weights (no CLIP weights offline): the demo shows the machinery")
        run_demo(plan)
