"""Cross-dataset evaluation: every model on every evaluation set -> an hmean matrix in MLflow.

Training the models is a workflow's job (`tcm pipeline run`); this job takes their URIs. Rows are models
(labelled by what they were trained on) or spotting pairs (`{label, det, rec}`: their cells are the end-to-end
hmean of `tcm evaluate --rec`, on sets with transcriptions), columns evaluation sets. Each cell is one `run_evaluation` (its own
MLflow run, nested under the matrix run); the matrix run holds the table (`cross_eval/hmean.json` via
`log_table`, plus `cells.json` with precision/recall and `hmean.csv`) and an annotated heatmap PNG.

    name: ic15-vs-td500
    mlflow: {tracking_uri: null, experiment: tcm-cross-eval}
    config: null                 # experiment YAML for test scale and protocol (default: each model's own)
    set: {eval.num_actors: 2}    # dotted overrides of it
    models:
      - {label: ic15, uri: "models:/tcm-ic15@champion"}
      - {label: td500, uri: "s3://bucket/runs/td500/checkpoint_epoch=1200"}
      - {label: ic15+str, det: "models:/tcm-ic15@champion", rec: "models:/tcm-recognizer@champion"}
    datasets:
      - {label: ic15, uri: s3://bucket/ingested/ic15, split: test}
      - {label: td500, uri: s3://bucket/ingested/td500, split: test}

`${VAR}` / `${VAR:-default}` in any string reads the environment. `--set` takes dotted keys, list items by
index (`models.0.uri=…`) and one key of `set` (`set.eval.protocol=deteval`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import typer
from pydantic import Field, ValidationError, model_validator

from pipelines import registry, tracking
from pipelines.config import ConfigError, DatasetRef, ExperimentConfig, load_config
from pipelines.workflow import (
    Strict,
    WorkflowMlflow,
    describe_error,
    interpolate,
    load_yaml,
    parse_set,
    set_path,
)

ARTIFACT_DIR = "cross_eval"


class ModelSpec(Strict):
    """A row: a model (`uri`: its cells are detection hmean) or a spotting pair (`det` + `rec`: end-to-end hmean)."""

    label: str = Field(min_length=1)  # the row: usually the training set's name
    uri: str | None = None  # models:/…, runs:/… or a checkpoint folder (path, file://, s3://)
    det: str | None = None  # a spotting pair: the detector's URI ...
    rec: str | None = None  # ... and the recogniser's

    @model_validator(mode="after")
    def _model_or_pair(self) -> ModelSpec:
        if (self.uri is None) == (self.det is None and self.rec is None) or (self.det is None) != (self.rec is None):
            raise ValueError(f"model {self.label!r}: give `uri` (a model) or both `det` and `rec` (a spotting pair)")
        return self

    @property
    def metric(self) -> str:
        """The metric of this row's cells (run_evaluation's name)."""
        return "test/hmean" if self.uri is not None else "test/e2e/hmean"

    def describe(self) -> str:
        return self.uri if self.uri is not None else f"{self.det} + {self.rec}"


class EvalSet(Strict):
    label: str = Field(min_length=1)  # the column
    uri: str  # an ingested dataset (folder or s3:// prefix with manifest.json)
    split: str = "test"  # cross-dataset results are reported on each set's test split

    def ref(self) -> DatasetRef:
        return DatasetRef(uri=self.uri, split=self.split)


class CrossEvalConfig(Strict):
    name: str = Field("cross-eval", min_length=1)  # the matrix run's name in MLflow
    mlflow: WorkflowMlflow = Field(default_factory=WorkflowMlflow)
    config: str | None = None  # experiment YAML for test scale and protocol; None: each model's own
    set: dict[str, Any] = Field(default_factory=dict)
    num_overlays: int = Field(2, ge=0)  # overlays per cell's evaluation run (a few show what went wrong)
    models: list[ModelSpec] = Field(min_length=1)
    datasets: list[EvalSet] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_labels(self) -> CrossEvalConfig:
        for what, items in (("models", self.models), ("datasets", self.datasets)):
            labels = [i.label for i in items]
            if dupes := sorted({x for x in labels if labels.count(x) > 1}):
                raise ValueError(f"{what}: labels must be unique (repeated: {', '.join(dupes)})")
        return self


@dataclasses.dataclass
class CrossEvalOutcome:
    rows: list[str]  # model labels
    cols: list[str]  # dataset labels
    hmean: list[list[float]]  # (len(rows), len(cols))
    cells: list[dict[str, Any]]  # one per (model, dataset): labels, hmean, precision, recall, eval run id
    run_id: str  # the matrix run
    tracking_uri: str


def load_cross_eval(path: str | Path, sets: Iterable[str] = ()) -> CrossEvalConfig:
    data, lines = load_yaml(path)
    origin: dict[tuple[str, ...], str] = {}
    for item in sets:
        parts, value = parse_set(item)
        keys: list[str | int] = ["set", ".".join(parts[1:])] if parts[0] == "set" and len(parts) > 1 else list(parts)
        set_path(data, keys, value, f"--set {item}")
        origin[tuple(map(str, keys))] = f"--set {item}"
    data = interpolate(data, {}, str(path))
    try:
        return CrossEvalConfig.model_validate(data)
    except ValidationError as err:
        problems = [describe_error(e, data, str(path), lines, origin) for e in err.errors()]
        head = f"{path}: invalid cross-evaluation config ({len(problems)} problem{'s' if len(problems) > 1 else ''})"
        raise ConfigError("\n  ".join([head, *problems])) from None


def run_cross_eval(cfg: CrossEvalConfig, *, echo: Callable[[str], None] = print) -> CrossEvalOutcome:
    """Evaluate every model on every dataset; log the matrix run (table, heatmap, a metric per cell)."""
    from mlflow import MlflowClient

    from pipelines.evaluate import run_evaluation

    tracking_uri = cfg.mlflow.resolved_tracking_uri()
    overrides = {"mlflow.tracking_uri": tracking_uri, "mlflow.experiment": cfg.mlflow.experiment}
    if cfg.mlflow.artifact_location:
        overrides["mlflow.artifact_location"] = cfg.mlflow.artifact_location
    exp_cfg: ExperimentConfig | None = None
    if cfg.config:
        exp_cfg = load_config(cfg.config).with_overrides({**cfg.set, **overrides}, "cross-eval set")
    experiment_id = registry.ensure_experiment(tracking_uri, cfg.mlflow.experiment, cfg.mlflow.artifact_location)
    client = MlflowClient(tracking_uri)
    tags = {**tracking.source_tags(), "tcm.kind": "cross-eval"}
    run_id = client.create_run(experiment_id, run_name=cfg.name, tags=tags).info.run_id
    tracking.log_datasets(tracking_uri, run_id, cfg.datasets)
    logger = registry.RunLogger(tracking_uri, run_id)
    logger.params({f"model.{m.label}": m.describe() for m in cfg.models})
    logger.params({f"data.{d.label}": f"{d.uri}#{d.split}" for d in cfg.datasets})
    try:
        cells = []
        for m in cfg.models:
            for d in cfg.datasets:
                echo(f"cross-eval: {m.label} on {d.label}")
                out = run_evaluation(
                    m.uri or str(m.det),
                    [d.ref()],
                    exp_cfg,
                    tracking_uri=tracking_uri,
                    overrides=None if exp_cfg else {**cfg.set, **overrides},
                    num_overlays=cfg.num_overlays,
                    run_name=f"{cfg.name}: {m.label} on {d.label}",
                    parent_run_id=run_id,
                    rec=m.rec,
                )
                if out.mlflow_run_id:  # the same (model, data) run may exist from an earlier matrix
                    registry.RunLogger(tracking_uri, out.mlflow_run_id).tags({registry.PARENT_TAG: run_id})
                prefix = m.metric.removesuffix("hmean")  # test/ or test/e2e/
                cells.append({
                    "model": m.label, "dataset": d.label, "eval_run_id": out.mlflow_run_id, "metric": m.metric,
                    **{k: float(out.metrics[f"{prefix}{k}"]) for k in ("hmean", "precision", "recall")},
                })  # fmt: skip
        rows, cols = [m.label for m in cfg.models], [d.label for d in cfg.datasets]
        hmean = [[c["hmean"] for c in cells[i * len(cols) : (i + 1) * len(cols)]] for i in range(len(rows))]
        _log_matrix(logger, rows, cols, hmean, cells)
    except BaseException:
        registry.finish_run(tracking_uri, run_id, "FAILED")
        raise
    registry.finish_run(tracking_uri, run_id, "FINISHED")
    echo(format_matrix(rows, cols, hmean))
    return CrossEvalOutcome(rows, cols, hmean, cells, run_id, tracking_uri)


def metric_key(label: str) -> str:
    """A label as part of an MLflow metric name (letters, digits, _ - . and space are kept)."""
    return re.sub(r"[^A-Za-z0-9_. -]", "_", label)


def _log_matrix(
    logger: registry.RunLogger, rows: list[str], cols: list[str], hmean: list[list[float]], cells: list[dict[str, Any]]
) -> None:
    # detection rows: test/hmean/<model>/<data>; spotting pairs: test/e2e/hmean/<model>/<data>
    logger.metrics({f"{c['metric']}/{metric_key(c['model'])}/{metric_key(c['dataset'])}": c["hmean"] for c in cells}, step=0)
    table = {"model": rows, **{col: [hmean[i][j] for i in range(len(rows))] for j, col in enumerate(cols)}}
    logger.client.log_table(logger.run_id, data=table, artifact_file=f"{ARTIFACT_DIR}/hmean.json")
    logger.client.log_table(
        logger.run_id, data={k: [c[k] for c in cells] for k in cells[0]}, artifact_file=f"{ARTIFACT_DIR}/cells.json"
    )
    with tempfile.TemporaryDirectory(prefix="tcm-cross-eval-") as tmp:
        folder = Path(tmp)
        csv = ["model," + ",".join(cols)] + [",".join([r, *(f"{v:.6f}" for v in hmean[i])]) for i, r in enumerate(rows)]
        (folder / "hmean.csv").write_text("\n".join(csv) + "\n")
        heatmap(rows, cols, hmean, folder / "hmean_heatmap.png")
        logger.artifacts(folder, ARTIFACT_DIR)


def heatmap(rows: Sequence[str], cols: Sequence[str], values: Sequence[Sequence[float]], path: Path) -> Path:
    """An annotated hmean heatmap (rows = models, cols = evaluation sets), colour scale fixed to [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    R, C = len(rows), len(cols)
    fig, ax = plt.subplots(figsize=(2.0 + 1.3 * C, 1.5 + 0.7 * R))
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(C), labels=list(cols), rotation=30, ha="right")
    ax.set_yticks(range(R), labels=list(rows))
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("model (trained on); spotting pairs: end-to-end hmean")
    for i in range(R):
        for j in range(C):
            v = float(values[i][j])
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="black" if v > 0.6 else "white")
    fig.colorbar(image, ax=ax, label="hmean")
    ax.set_title("cross-dataset hmean")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_matrix(rows: Sequence[str], cols: Sequence[str], values: Sequence[Sequence[float]]) -> str:
    """The matrix as an aligned text table (what the job prints)."""
    head = ["hmean (model \\ eval)", *cols]
    body = [[r, *(f"{v:.4f}" for v in values[i])] for i, r in enumerate(rows)]
    widths = [max(len(line[k]) for line in [head, *body]) for k in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) if k else cell.ljust(w) for k, (cell, w) in enumerate(zip(line, widths, strict=True)))
                     for line in [head, *body])  # fmt: skip


def cross_eval_command(
    config: Path = typer.Option(..., "--config", help="Cross-evaluation YAML: models (label, uri; or label, det, rec for a spotting pair: end-to-end hmean) and datasets (label, uri, split)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. --set models.0.uri=models:/m@champion (repeatable)."),
    json_out: bool = typer.Option(False, "--json", help="Print the matrix and cells as JSON after the table."),
) -> None:
    """Evaluate every model on every dataset; log the hmean matrix to MLflow as a table and a heatmap PNG."""
    from pipelines.checkpoint import CheckpointError
    from pipelines.storage import StorageError, redact_uri

    try:
        outcome = run_cross_eval(load_cross_eval(config, set_), echo=typer.echo)
    except (ConfigError, CheckpointError, StorageError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"matrix logged to MLflow run {outcome.run_id} ({redact_uri(outcome.tracking_uri)})")
    if json_out:
        typer.echo(json.dumps(dataclasses.asdict(outcome), indent=2))
