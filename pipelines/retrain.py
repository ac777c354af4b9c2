"""Scheduled retraining: new data in the bucket -> ingest the delta -> fine-tune from `champion` -> evaluate on a
fixed benchmark -> promote only if it is better by a margin.

Each run is one batch `batch-<k>` with recorded stages (ingested, trained, decided) in `<shards>/retrain_state.json`:
a run that crashed resumes its batch at the first unfinished stage, a run with nothing new does nothing and
says so, and a lock in the bucket (with expiry) keeps two runs started together from both training.

Every batch is ingested into its own folder `<shards>/batch-<k>/` as split `train`, so the fine-tune can mix all
batches so far (training mixes sources of one split), each weighted by its row count: every row once per epoch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ConfigDict, Field

from pipelines import registry, storage
from pipelines.config import ConfigError, DatasetRef, ExperimentConfig, load_config
from pipelines.ingest import ingest, plan_pairs
from pipelines.lock import DEFAULT_TTL_S, BucketLock, LockHeld

STATE_FILE = "retrain_state.json"
BATCH_SPLIT = "train"  # the split of every batch folder: one split name, so the fine-tune can mix them all


class RetrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    raw: str  # prefix where new raw data lands, in the dataset's native layout
    format: str  # dataset format of the raw data
    dataset: str | None = None  # name in row ids (default: the format)
    shards: str  # where each batch is ingested (split batch-<k>); holds the state and the lock
    benchmark: DatasetRef  # fixed, already-ingested benchmark split the decision is made on
    experiment: str  # experiment YAML used for fine-tuning (model, optimiser, epochs, MLflow)
    set: dict[str, Any] = Field(default_factory=dict)  # dotted overrides of that experiment
    margin: float = 0.01  # hmean points the new model must gain: below ~1 point is noise on a small benchmark
    lock_ttl_s: float = Field(DEFAULT_TTL_S, gt=0)


@dataclass
class RetrainOutcome:
    action: str  # "nothing-new" | "promoted" | "not-promoted"
    message: str
    batch: str | None = None
    version: str | None = None
    hmean: float | None = None
    champion_hmean: float | None = None


def load_retrain_config(path: str | Path) -> RetrainConfig:
    import yaml
    from pydantic import ValidationError

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return RetrainConfig.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{path}: {problems}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err})") from None


def _read_state(shards: storage.Location) -> dict:
    loc = shards.join(STATE_FILE)
    if storage.exists(loc):
        return json.loads(storage.read_bytes(loc))
    return {"files": {}, "batches": []}


def _write_state(shards: storage.Location, state: dict) -> None:
    storage.write_bytes(shards.join(STATE_FILE), json.dumps(state, indent=2, sort_keys=True).encode())


def delta_files(current: dict[str, tuple[int, int]], seen: dict[str, list[int]], fmt: str) -> set[str]:
    """Files of every image/annotation pair of which either file is new or changed (size or mtime)."""
    changed = {f for f, stat in current.items() if list(stat) != seen.get(f)}
    plan = plan_pairs(sorted(current), fmt)
    return {f for p in plan.pairs if {p.image, p.annotation} & changed for f in (p.image, p.annotation)}


def batch_uri(rc: RetrainConfig, batch: str) -> str:
    return rc.shards.rstrip("/") + "/" + batch


def _experiment(rc: RetrainConfig, batches: list[tuple[str, int]], k: int, init_from: str | None) -> ExperimentConfig:
    """The fine-tune of batch k: every ingested batch so far (name, rows), weighted by its rows."""
    exp = load_config(rc.experiment).with_overrides(rc.set, "retrain set") if rc.set else load_config(rc.experiment)
    overrides: dict[str, Any] = {
        "name": f"{exp.name}-retrain-{k:04d}",  # one run per batch: a crashed fine-tune resumes, not restarts
        "data.train": [{"uri": batch_uri(rc, b), "split": BATCH_SPLIT, "weight": rows} for b, rows in batches if rows],
        "data.val": [rc.benchmark.model_dump()],
        "train.init_from": init_from,
    }
    return exp.with_overrides(overrides, "retrain")


def _champion(client, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


def _hmean(model_uri: str, rc: RetrainConfig, exp: ExperimentConfig, tracking_uri: str) -> float:
    from pipelines.evaluate import run_evaluation

    outcome = run_evaluation(model_uri, [rc.benchmark], exp, tracking_uri=tracking_uri, log_to_mlflow=False)
    return float(outcome.metrics["test/hmean"])


def retrain(rc: RetrainConfig, progress=print) -> RetrainOutcome:
    from mlflow import MlflowClient

    from pipelines.train import init_ray, run_training

    shards = storage.resolve(rc.shards)
    with BucketLock(shards.join("retrain.lock").uri, ttl_s=rc.lock_ttl_s):
        state = _read_state(shards)
        pending = next((b for b in state["batches"] if b["stage"] != "decided"), None)
        if pending is None:
            current = storage.file_stats(storage.resolve(rc.raw))
            delta = delta_files(current, state["files"], rc.format)
            if not delta:
                msg = f"nothing new in {storage.redact_uri(rc.raw)} since the last run ({len(current)} files unchanged)"
                progress(msg)
                return RetrainOutcome("nothing-new", msg)
            k = len(state["batches"]) + 1
            pending = {"name": f"batch-{k:04d}", "k": k, "stage": "listed", "files": sorted(delta)}
            state["batches"].append(pending)
            _write_state(shards, state)
            progress(f"{len(delta)} new or changed files -> {pending['name']}")
        init_ray()  # before ingest starts Ray: the fine-tune's and the evaluation's actors need the S3 env too
        if pending["stage"] == "listed":
            manifest = ingest(rc.format, rc.raw, batch_uri(rc, pending["name"]), BATCH_SPLIT, dataset=rc.dataset,
                              only=set(pending["files"]), progress=progress)  # fmt: skip
            pending["rows"] = int(manifest["splits"].get(BATCH_SPLIT, 0))
            raw_stats = storage.file_stats(storage.resolve(rc.raw))
            state["files"].update({f: list(raw_stats[f]) for f in pending["files"] if f in raw_stats})
            pending["stage"] = "ingested"
            _write_state(shards, state)
        base = load_config(rc.experiment)
        if rc.set:  # `set: {mlflow.registered_model: …}` names the model the decision is about, as in the fine-tune
            base = base.with_overrides(rc.set, "retrain set")
        tracking_uri = registry.absolute_tracking_uri(base.mlflow.resolved_tracking_uri())
        name = base.mlflow.registered_model or "tcm-detector"
        client = MlflowClient(tracking_uri=tracking_uri)
        champion = _champion(client, name)
        init_from = f"models:/{name}@champion" if champion else None
        batches = [(b["name"], b.get("rows", 0)) for b in state["batches"] if b["stage"] != "listed"]
        exp = _experiment(rc, batches, pending["k"], init_from)
        if pending["stage"] == "ingested":
            progress(f"fine-tuning {exp.name} from {init_from or 'the experiment config (no champion yet)'}")
            outcome = run_training(exp, register=False)
            version = registry.register_model(tracking_uri, outcome.model_uri, name, "challenger",
                                              {"run_id": outcome.run_id, "batch": pending["name"]})  # fmt: skip
            pending.update(stage="trained", version=version, run_id=outcome.run_id)
            _write_state(shards, state)
        version = pending["version"]
        new = _hmean(f"models:/{name}/{version}", rc, exp, tracking_uri)
        old = _hmean(f"models:/{name}/{champion.version}", rc, exp, tracking_uri) if champion else None
        refusal = registry.promotion_refusal(new, base.mlflow.promote_min_hmean, "benchmark hmean")
        if refusal is not None:  # no empty champion, whatever the old one scores
            reason = refusal + (f": champion v{champion.version} kept" if champion else ": no champion yet")
            action = "not-promoted"
            client.set_tag(pending["run_id"], registry.PROMOTION_TAG, f"{action}: {reason}")
        elif old is None or new >= old + rc.margin:
            client.set_registered_model_alias(name, "champion", version)
            client.delete_registered_model_alias(name, "challenger")  # it is the champion now
            reason = (f"hmean {new:.4f} >= champion {old:.4f} + margin {rc.margin}" if old is not None
                      else f"first model, hmean {new:.4f}")  # fmt: skip
            action = "promoted"
        else:
            reason = f"hmean {new:.4f} < champion {old:.4f} + margin {rc.margin}: champion v{champion.version} kept"
            action = "not-promoted"
        client.set_model_version_tag(name, version, "retrain_decision", f"{action}: {reason}")
        client.set_model_version_tag(name, version, "benchmark_hmean", f"{new:.6f}")
        pending.update(stage="decided", decision=action, reason=reason, hmean=new, at=time.time())
        _write_state(shards, state)
        message = f"{pending['name']}: version {version} {action} ({reason})"
        progress(message)
        return RetrainOutcome(action, message, pending["name"], version, new, old)


def retrain_command(
    config: Path = typer.Option(..., "--config", help="Retrain YAML: raw, format, shards, benchmark, experiment, margin."),
) -> None:
    """Retrain from new data in the bucket: ingest the delta, fine-tune from champion, promote only if better."""
    try:
        rc = load_retrain_config(config)
        retrain(rc, progress=typer.echo)
    except LockHeld as err:
        typer.echo(f"not started: {err}", err=True)
        raise typer.Exit(3) from None
    except (ConfigError, storage.StorageError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
