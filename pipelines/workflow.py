"""Workflows: `tcm pipeline run --config jobs/pipelines/<name>.yaml` runs the stages a YAML lists, in order, as
one Ray job (this process is the driver), and resumes a failed run at the first stage that did not finish.

    <storage>/<name>/workflow.json          the MLflow parent run of the workflow (created once, reused on resume)
    <storage>/<name>/stages/<stage>.json    {status, outputs, started_at, finished_at, attempts, spec, error?}

A stage whose record says `done` is skipped on a re-run (its recorded outputs feed the later stages); the first
stage that is not done runs, and so does every stage after it. Later stages read an earlier stage's outputs
through `from: <stage name>` (the model of a train or tune stage). Every stage's MLflow runs are nested under the
workflow's parent run, which carries a tag `stage.<name>.status` per stage.

YAML (unknown keys are rejected; `${var}` / `${var:-default}` in any string is replaced from `vars`, else from
the environment; `vars` themselves may read the environment):

    name: demo
    vars: {work: "${TCM_WORK:-work/demo}"}
    storage: ${work}/workflows                      # stage records: a path, file:// or s3://
    mlflow: {tracking_uri: null, experiment: tcm}   # null: $MLFLOW_TRACKING_URI, else <storage>/mlflow.db
    stages:
      - {name: raw, kind: synth, format: icdar2015, out: "${work}/raw", splits: {train: 24, test: 6}}
      - {name: ingest-train, kind: ingest, format: icdar2015, src: "${work}/raw/train", dst: "${work}/data",
         split: train}
      - {name: train, kind: train, config: jobs/configs/tiny_cpu.yaml, set: {train.epochs: 2}}
      - {name: evaluate, kind: evaluate, from: train, data: [{uri: "${work}/data", split: test}]}
      - {name: register, kind: register, from: train, registered_model: tcm-demo, alias: champion}
      - {name: spot, kind: spot, det: train, rec: models:/tcm-recognizer@champion, images: "${work}/raw/test/images",
         out: "${work}/spots", gt: "${work}/raw/test/annotations"}   # gt: scored (protocol e2e) -> metrics

`--set` addresses top-level keys (`vars.work=/tmp/w`, `storage=s3://b/p`) or a stage by name
(`evaluate.data=[{uri: x, split: test}]`; `train.set.optim.lr=1e-3` sets one key of the stage's `set`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines import registry, storage
from pipelines.config import ConfigError, DatasetRef, ExperimentConfig, MlflowConfig, load_config

WORKFLOW_FILE = "workflow.json"
STAGES_DIR = "stages"
TOP_LEVEL = ("name", "vars", "storage", "mlflow", "stages")  # `--set` keys that are not stage names
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # stage and workflow names become file names


class WorkflowError(RuntimeError):
    """The workflow cannot run (bad YAML, storage, a `from:` that has no model). The message names where."""


class StageFailed(WorkflowError):
    """A stage raised. `line` is the one-line error recorded in the stage's record."""

    def __init__(self, stage: str, line: str):
        super().__init__(f"stage {stage} failed: {line}")
        self.stage = stage
        self.line = line


# ---------------------------------------------------------------------------------------------------- schema


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class WorkflowMlflow(Strict):
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (as ExperimentConfig)
    experiment: str = "tcm"  # every stage's runs go here, so the UI can nest them under the parent run
    artifact_location: str | None = None  # None: <storage>/mlflow-artifacts (beside the stage records)

    def resolved_tracking_uri(self) -> str:
        return registry.absolute_tracking_uri(MlflowConfig(tracking_uri=self.tracking_uri).resolved_tracking_uri())


class StageBase(Strict):
    name: str = Field(pattern=NAME_PATTERN)


class SynthStage(StageBase):
    """Render synthetic images in a dataset's own format into `out/<split>/` (demos and tests; local paths)."""

    kind: Literal["synth"]
    format: str
    out: str
    splits: dict[str, int] = Field(default_factory=lambda: {"train": 24, "test": 6})  # enough for a tiny demo
    seed: int = 0
    size: int = Field(128, ge=64)  # the tiny preset's input size


class IngestStage(StageBase):
    kind: Literal["ingest"]
    format: str
    src: str | list[str]
    dst: str
    split: str
    dataset: str | None = None  # name in row ids (default: the format)


class TrainStage(StageBase):
    kind: Literal["train"]
    config: str  # experiment YAML (a path relative to the job's working directory)
    set: dict[str, Any] = Field(default_factory=dict)  # dotted overrides: {train.epochs: 2}


class TuneStage(StageBase):
    kind: Literal["tune"]
    config: str
    set: dict[str, Any] = Field(default_factory=dict)


class EvaluateStage(StageBase):
    kind: Literal["evaluate"]
    model: str | None = None  # models:/…, runs:/… or a checkpoint folder; or
    from_: str | None = Field(None, alias="from")  # the name of an earlier train/tune stage
    data: list[DatasetRef] = Field(min_length=1)
    config: str | None = None  # experiment YAML for test scale and protocol (default: the model's own)
    set: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_model(self) -> EvaluateStage:
        if (self.model is None) == (self.from_ is None):
            raise ValueError("give exactly one of `model` (a URI) and `from` (an earlier train/tune stage)")
        return self


class SpotStage(StageBase):
    """`tcm spot` over a folder or s3:// prefix of images; with `gt`, the submission scored as `tcm score` does."""

    kind: Literal["spot"]
    det: str  # the name of an earlier train/tune stage, or a model URI / checkpoint folder (a stage name wins)
    rec: str  # likewise, a recogniser
    images: str  # folder or s3:// prefix (recursive)
    out: str  # local folder: submission/, spots.jsonl, overlays/, report.json (+ score_<protocol>.json)
    gt: str | None = None  # local folder of IC15 gt_img_<N>.txt (Total-Text <N>.txt): score the submission
    # None: e2e for quad detectors, totaltext-e2e for poly-mode ones (the form their submission is written in)
    protocol: Literal["e2e", "word-spotting", "totaltext-e2e"] | None = None
    overlays: bool = True  # the overlay PNGs, as `tcm spot` without --no-overlays
    det_actors: int = Field(1, ge=1)  # as `tcm spot`: one copy of each model fits the 2-core CI box
    rec_actors: int = Field(1, ge=1)
    gpu: bool = False


class RegisterStage(StageBase):
    kind: Literal["register"]
    from_: str = Field(alias="from")  # an earlier train/tune stage
    registered_model: str = "tcm-detector"  # as ExperimentConfig.mlflow.registered_model
    alias: str = "champion"
    # the alias only when the model's validation hmean reaches this (as ExperimentConfig.mlflow.promote_min_hmean)
    min_hmean: float = Field(MlflowConfig().promote_min_hmean, ge=0, le=1)


Stage = Annotated[
    SynthStage | IngestStage | TrainStage | TuneStage | EvaluateStage | SpotStage | RegisterStage,
    Field(discriminator="kind"),
]

MODEL_STAGES = (TrainStage, TuneStage)  # stages whose outputs carry a model_uri for `from:`


class Workflow(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    vars: dict[str, str] = Field(default_factory=dict)  # substituted into ${...} before validation
    storage: str  # stage records and workflow.json: a path, file:// or s3://bucket/prefix
    mlflow: WorkflowMlflow = Field(default_factory=WorkflowMlflow)
    stages: list[Stage] = Field(min_length=1)

    @model_validator(mode="after")
    def _names_and_sources(self) -> Workflow:
        seen: dict[str, Any] = {}
        all_names = {s.name for s in self.stages}
        for i, stage in enumerate(self.stages):
            if stage.name in seen:
                raise ValueError(f"stages[{i}]: stage name {stage.name!r} is used twice (names must be unique)")
            if stage.name in TOP_LEVEL:
                raise ValueError(f"stages[{i}]: {stage.name!r} is a top-level key; choose another stage name")
            source = getattr(stage, "from_", None)
            if source is not None and not isinstance(seen.get(source), MODEL_STAGES):
                earlier = [n for n, s in seen.items() if isinstance(s, MODEL_STAGES)]
                raise ValueError(
                    f"stages[{i}] ({stage.name}): from: {source!r} must name an earlier train or tune stage "
                    f"(earlier ones: {', '.join(earlier) or 'none'})"
                )
            for field in ("det", "rec") if isinstance(stage, SpotStage) else ():
                ref = getattr(stage, field)  # a stage name (it wins over a folder of that name) or a model URI
                if ref in all_names and not isinstance(seen.get(ref), MODEL_STAGES):
                    what = f"a {seen[ref].kind} stage" if ref in seen else "a later stage"
                    raise ValueError(f"stages[{i}] ({stage.name}): {field}: {ref!r} is {what}, not an earlier train "
                                     "or tune stage (name one with a model, or give a model URI)")  # fmt: skip
            seen[stage.name] = stage
        return self

    def tracking_uri(self) -> str:
        """The configured store, else $MLFLOW_TRACKING_URI, else `<storage>/mlflow.db` when the records are local
        (the run's store lives and goes with its working folder, never in the current folder)."""
        if self.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
            return self.mlflow.resolved_tracking_uri()
        loc = storage.resolve(self.storage)
        if loc.is_s3:  # a bucket holds no sqlite file: the current folder, as for `tcm train`
            return self.mlflow.resolved_tracking_uri()
        Path(loc.path).mkdir(parents=True, exist_ok=True)  # sqlite creates the file, not its folder
        return registry.absolute_tracking_uri(f"sqlite:///{Path(loc.path) / 'mlflow.db'}")

    def artifact_location(self) -> str:
        return registry.default_artifact_location(MlflowConfig(artifact_location=self.mlflow.artifact_location), self.storage)


# ---------------------------------------------------------------------------------------------------- loading


def load_yaml(path: str | Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """(data, key path -> line) of a YAML mapping; ConfigError naming the file and line otherwise."""
    from pipelines.config import _key_lines

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        lines = _key_lines(yaml.compose(text))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data, lines


def parse_set(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key.sub=value")
    return key.strip().split("."), (yaml.safe_load(raw) if raw.strip() else "")


def set_path(data: Any, path: list[str | int], value: Any, source: str) -> None:
    """Set data[p0][p1]… = value; mappings are created on the way, list items are addressed by index."""
    node = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            try:
                index = int(part)
                node[index]  # noqa: B018  (bounds check)
            except (ValueError, IndexError):
                raise ConfigError(f"{source}: {'.'.join(map(str, path[:i]))} has no item {part!r}") from None
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"{source}: {'.'.join(map(str, path[:i]))} is a value, not a section")


def apply_workflow_sets(data: dict[str, Any], items: Iterable[str]) -> dict[tuple[str, ...], str]:
    """Apply `--set` items to raw workflow data: top-level keys, or `<stage name>.<field>` (`<stage>.set.<a.b>`
    sets one dotted key of the stage's `set`). Returns {key path: '--set …'} for error messages."""
    origin: dict[tuple[str, ...], str] = {}
    for item in items:
        parts, value = parse_set(item)
        source = f"--set {item}"
        if parts[0] in TOP_LEVEL:
            path: list[str | int] = list(parts)
        else:
            stages = data.get("stages") if isinstance(data.get("stages"), list) else []
            names = [s.get("name") for s in stages if isinstance(s, dict)]
            if parts[0] not in names:
                raise ConfigError(
                    f"{source}: {parts[0]!r} is neither a top-level key ({', '.join(TOP_LEVEL)}) nor a stage "
                    f"(stages: {', '.join(map(str, names)) or 'none'})"
                )
            if len(parts) < 2:
                raise ConfigError(f"{source}: name a field of stage {parts[0]!r}, e.g. {parts[0]}.data=[...]")
            rest = parts[1:] if parts[1] != "set" or len(parts) < 3 else ["set", ".".join(parts[2:])]
            path = ["stages", names.index(parts[0]), *rest]
        set_path(data, path, value, source)
        origin[tuple(map(str, path))] = source
    return origin


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, scope: Mapping[str, str], where: str) -> Any:
    """Replace ${name} / ${name:-default} in every string of `value` from `scope`, else the environment."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in scope:
                return str(scope[name])
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{where}: ${{{name}}} is neither in vars nor in the environment (or give ${{{name}:-default}})")

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [interpolate(v, scope, f"{where}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: interpolate(v, scope, f"{where}.{k}") for k, v in value.items()}
    return value


def load_workflow(path: str | Path, sets: Iterable[str] = ()) -> Workflow:
    """Read a workflow YAML, apply `--set` items, substitute ${vars}, validate; one ConfigError for all problems."""
    data, lines = load_yaml(path)
    origin = apply_workflow_sets(data, sets)
    raw_vars = data.get("vars") or {}
    if not isinstance(raw_vars, dict):
        raise ConfigError(f"{path}:{lines.get(('vars',), '?')}: vars must be a mapping of name: value")
    scope = {str(k): str(interpolate(v, {}, f"{path}: vars.{k}")) for k, v in raw_vars.items()}
    data = {k: (v if k == "vars" else interpolate(v, scope, f"{path}: {k}")) for k, v in data.items()}
    data["vars"] = scope
    return validate_workflow(data, str(path), lines, origin)


def validate_workflow(
    data: Mapping[str, Any],
    source: str,
    lines: Mapping[tuple[str, ...], int] | None = None,
    origin: Mapping[tuple[str, ...], str] | None = None,
) -> Workflow:
    try:
        return Workflow.model_validate(data)
    except ValidationError as err:
        problems = [describe_error(e, data, source, lines or {}, origin or {}) for e in err.errors()]
        head = f"{source}: invalid workflow ({len(problems)} problem{'s' if len(problems) > 1 else ''})"
        raise ConfigError("\n  ".join([head, *problems])) from None


def describe_error(
    err: Mapping[str, Any],
    data: Mapping[str, Any],
    source: str,
    lines: Mapping[tuple[str, ...], int],
    origin: Mapping[tuple[str, ...], str],
) -> str:
    """`file:line: stages[train].set: message` — the stage by name, pydantic's union tag (the kind) dropped."""
    path: list[str] = []
    shown: list[str] = []
    node: Any = data
    for part in err["loc"]:
        if isinstance(node, Mapping) and part not in node and part == node.get("kind"):
            continue  # the discriminated union's tag
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            name = node.get("name") if isinstance(node, Mapping) else None
            shown[-1:] = [f"{shown[-1]}[{name or part}]"] if shown else [str(part)]
        else:
            node = node.get(part) if isinstance(node, Mapping) else None
            shown.append(str(part))
        path.append(str(part))
    match err["type"]:
        case "extra_forbidden":
            message = "unknown key"
        case "missing":
            message = "required key is missing"
        case "value_error":
            message = err["msg"].removeprefix("Value error, ")
        case _:
            message = f"{err['msg']} (got {str(err.get('input'))[:60]!r})"
    if not path and (m := re.match(r"(stages)\[(\d+)\]", message)):  # a check across stages names its stage
        path = [m.group(1), m.group(2)]
    keys = [tuple(path[:i]) for i in range(len(path), 0, -1)]
    where = next((origin[k] for k in keys if k in origin), None)
    if where is None:
        line = next((lines[k] for k in keys if k in lines), None)
        where = f"{source}:{line}" if line else source
    return f"{where}: {'.'.join(shown)}: {message}" if shown else f"{where}: {message}"


# ---------------------------------------------------------------------------------------------------- running


@dataclasses.dataclass
class WorkflowOutcome:
    name: str
    parent_run_id: str
    tracking_uri: str
    ran: list[str]  # stages executed by this call
    skipped: list[str]  # stages already done by an earlier call
    outputs: dict[str, dict[str, Any]]  # stage name -> its recorded outputs


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _read_json(loc: storage.Location) -> dict[str, Any] | None:
    if not storage.exists(loc):
        return None
    try:
        return json.loads(storage.read_bytes(loc))
    except ValueError as err:
        raise WorkflowError(f"{loc.uri}: not valid JSON ({err}); delete it to run that stage again") from None


def _write_json(loc: storage.Location, data: Mapping[str, Any]) -> None:
    storage.write_bytes(loc, json.dumps(data, indent=2, sort_keys=True, default=str).encode())


def one_line(err: BaseException) -> str:
    """`Type: message` on one line (a ConfigError's problems joined with '; ', else the first line)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = "; ".join(lines) if isinstance(err, ConfigError) else (lines[0] if lines else "")
    return f"{type(err).__name__}: {text}"[:2000] if text else type(err).__name__


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


@dataclasses.dataclass
class Context:
    """What a stage sees: the workflow, the MLflow parent run and the outputs of the stages before it."""

    wf: Workflow
    tracking_uri: str
    parent_run_id: str
    outputs: dict[str, dict[str, Any]]
    echo: Callable[[str], None]

    def mlflow_overrides(self) -> dict[str, Any]:
        """Stage configs log into the workflow's store and experiment (children are nested within one)."""
        return {
            "mlflow.tracking_uri": self.tracking_uri,
            "mlflow.experiment": self.wf.mlflow.experiment,
            "mlflow.artifact_location": self.wf.artifact_location(),
        }

    def experiment(self, path: str, overrides: Mapping[str, Any], stage: str) -> ExperimentConfig:
        return load_config(path).with_overrides({**overrides, **self.mlflow_overrides()}, f"stage {stage}: set")

    def model_of(self, stage: str, *, checkpoint_ok: bool = False) -> str:
        out = self.outputs.get(stage, {})
        uri = out.get("model_uri") or (out.get("checkpoint") if checkpoint_ok else None)
        if not uri:
            raise WorkflowError(f"stage {stage} recorded no model_uri (is mlflow.log_model off?); outputs: {sorted(out)}")
        return str(uri)

    def nest(self, run_id: str) -> None:
        """Make `run_id` a child of the workflow's parent run (it may have been created earlier, elsewhere)."""
        registry.RunLogger(self.tracking_uri, run_id).tags({registry.PARENT_TAG: self.parent_run_id})

    def nest_by_key(self, key: str) -> None:
        """Nest the run recorded under a run key, when the stage failed before handing its id back."""
        from mlflow import MlflowClient

        exp = MlflowClient(self.tracking_uri).get_experiment_by_name(self.wf.mlflow.experiment)
        run_id = registry.find_run(self.tracking_uri, exp.experiment_id, key) if exp else None
        if run_id:
            self.nest(run_id)


def run_stage(stage: Any, ctx: Context) -> dict[str, Any]:
    """Execute one stage; returns its outputs (JSON-able)."""
    match stage:
        case SynthStage():
            return _synth(stage)
        case IngestStage():
            return _ingest(stage, ctx)
        case TrainStage():
            return _train(stage, ctx)
        case TuneStage():
            return _tune(stage, ctx)
        case EvaluateStage():
            return _evaluate(stage, ctx)
        case SpotStage():
            return _spot(stage, ctx)
        case RegisterStage():
            return _register(stage, ctx)
        case _:
            raise WorkflowError(f"stage {getattr(stage, 'name', stage)!r}: unknown kind")


def _synth(stage: SynthStage) -> dict[str, Any]:
    from tcm.data.synth import write_dataset

    out = _local(stage.out, stage.name, "out")  # synthetic data is written to a local folder
    images = {}
    for split, n in stage.splits.items():
        written = write_dataset(stage.format, out, n=n, seed=stage.seed, split=split, height=stage.size, width=stage.size)
        images[split] = len(written)
    return {"out": out, "format": stage.format, "images": images}


def _ingest(stage: IngestStage, ctx: Context) -> dict[str, Any]:
    from pipelines.ingest import ingest

    manifest = ingest(stage.format, stage.src, stage.dst, stage.split, dataset=stage.dataset, progress=ctx.echo)
    details = manifest.get("split_details", {}).get(stage.split, {})
    return {
        "uri": stage.dst,
        "split": stage.split,
        "rows": manifest["splits"][stage.split],
        "sha256": manifest["sha256"],
        "quarantined": len(details.get("quarantined", [])),
    }


def _train(stage: TrainStage, ctx: Context) -> dict[str, Any]:
    from pipelines.train import run_training

    cfg = ctx.experiment(stage.config, stage.set, stage.name)
    try:
        # registration is the register stage's job; run_training takes no parent id, so the run is nested after
        outcome = run_training(cfg, register=False)
    except BaseException:
        ctx.nest_by_key(registry.run_key(cfg.name, cfg.train.storage_path))
        raise
    ctx.nest(outcome.run_id)
    return {
        "run_id": outcome.run_id,
        "model_uri": outcome.model_uri,
        "checkpoint": outcome.checkpoint,
        "resumed": outcome.resumed,
        "metrics": _numbers(outcome.metrics),
    }


def _tune(stage: TuneStage, ctx: Context) -> dict[str, Any]:
    from pipelines.tune import run_sweep

    cfg = ctx.experiment(stage.config, stage.set, stage.name)
    try:
        outcome = run_sweep(cfg, register=False)
    except BaseException:
        ctx.nest_by_key(registry.run_key(f"sweep:{cfg.name}", cfg.train.storage_path))
        raise
    ctx.nest(outcome.parent_run_id)  # the trials stay children of the sweep run
    best = outcome.best
    return {
        "sweep_run_id": outcome.parent_run_id,
        "model_uri": best.model_uri if best else None,
        "best": _jsonable(dataclasses.asdict(best)) if best else None,
        "trials": len(outcome.trials),
    }


def _evaluate(stage: EvaluateStage, ctx: Context) -> dict[str, Any]:
    from pipelines.evaluate import run_evaluation

    model_uri = stage.model or ctx.model_of(str(stage.from_), checkpoint_ok=True)
    if stage.config:
        cfg, overrides = ctx.experiment(stage.config, stage.set, stage.name), None
    else:  # the model's own training config, with the stage's overrides
        cfg, overrides = None, {**stage.set, **ctx.mlflow_overrides()}
    outcome = run_evaluation(
        model_uri,
        stage.data,
        cfg,
        tracking_uri=ctx.tracking_uri,
        overrides=overrides,
        parent_run_id=ctx.parent_run_id,
        run_name=f"{ctx.wf.name}/{stage.name}",
    )
    if outcome.mlflow_run_id:
        ctx.nest(outcome.mlflow_run_id)  # an earlier evaluation of the same pair may have had another parent
    metrics = _numbers(outcome.metrics)
    headline = {f"test/{stage.name}/{k}": metrics[f"test/{k}"] for k in ("hmean", "precision", "recall")}
    registry.RunLogger(ctx.tracking_uri, ctx.parent_run_id).metrics(headline, step=0)
    return {"model_uri": model_uri, "metrics": metrics, "mlflow_run_id": outcome.mlflow_run_id}


def _spot(stage: SpotStage, ctx: Context) -> dict[str, Any]:
    from pipelines.score_spotting import score_spotting
    from pipelines.spot import SpotSettings, run_spot

    names = {s.name for s in ctx.wf.stages}
    det, rec = (ctx.model_of(ref, checkpoint_ok=True) if ref in names else ref for ref in (stage.det, stage.rec))
    out = Path(_local(stage.out, stage.name, "out"))
    settings = SpotSettings(det_actors=stage.det_actors, rec_actors=stage.rec_actors, use_gpu=stage.gpu)
    summary = run_spot(det, rec, stage.images, out, settings, tracking_uri=ctx.tracking_uri, overlays=stage.overlays,
                       echo=ctx.echo)  # fmt: skip
    outputs = {"det": det, "rec": rec, **summary}
    if stage.gt is not None:
        protocol = stage.protocol or ("totaltext-e2e" if summary["polygons"] else "e2e")
        scored = score_spotting(_local(stage.gt, stage.name, "gt"), out / "submission", protocol)
        (out / f"score_{protocol}.json").write_text(json.dumps(scored, indent=2))  # whole, like the other outputs
        outputs["metrics"] = {f"{protocol}/{k}": float(scored[k]) for k in ("hmean", "precision", "recall")}
        headline = {f"spot/{stage.name}/{k}": v for k, v in outputs["metrics"].items()}
        registry.RunLogger(ctx.tracking_uri, ctx.parent_run_id).metrics(headline, step=0)
    return outputs


def _local(uri: str, stage: str, key: str) -> str:
    if "://" in uri and not uri.startswith("file://"):
        raise WorkflowError(f"stage {stage}: {key} {uri!r}: must be a local folder")
    return uri.removeprefix("file://")


def _register(stage: RegisterStage, ctx: Context) -> dict[str, Any]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    model_uri = ctx.model_of(stage.from_)
    tags = {"workflow": ctx.wf.name, "workflow_run_id": ctx.parent_run_id, "stage": stage.from_, "model_uri": model_uri}
    client = MlflowClient(ctx.tracking_uri)
    try:  # registered by an attempt that died before its record was written: reuse that version
        versions = client.search_model_versions(f"name = '{stage.registered_model}'")
    except MlflowException:
        versions = []
    same = [v for v in versions if all(v.tags.get(k) == str(t) for k, t in tags.items())]
    if same:
        version = str(max(int(v.version) for v in same))
        ctx.echo(f"stage {stage.name}: {stage.registered_model} version {version} already holds this model")
    else:
        version = registry.register_version(ctx.tracking_uri, model_uri, stage.registered_model, tags)
    out = ctx.outputs.get(stage.from_, {})
    run_id = out.get("run_id") or (out.get("best") or {}).get("mlflow_run_id")  # train / tune stage outputs
    hmean = registry.logged_val_hmean(ctx.tracking_uri, run_id) if run_id else None
    promoted = registry.set_alias_if_good(ctx.tracking_uri, stage.registered_model, version, stage.alias,
                                          run_id=run_id, hmean=hmean, floor=stage.min_hmean)  # fmt: skip
    if not promoted:
        ctx.echo(f"stage {stage.name}: version {version} registered without {stage.alias!r}: "
                 f"{registry.promotion_refusal(hmean, stage.min_hmean)}")  # fmt: skip
    return {"model_uri": model_uri, "registered_model": stage.registered_model, "version": version,
            "alias": stage.alias if promoted else None}  # fmt: skip


def _open_parent(wf: Workflow, root: storage.Location, tracking_uri: str) -> dict[str, Any]:
    """workflow.json with the parent run: the recorded one (marked RUNNING again) or a new one."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    state = _read_json(root.join(WORKFLOW_FILE)) or {}
    shown_uri = storage.redact_uri(tracking_uri)
    experiment_id = registry.ensure_experiment(tracking_uri, wf.mlflow.experiment, wf.artifact_location())
    run_id = state.get("parent_run_id") if state.get("tracking_uri") == shown_uri else None
    if run_id:
        try:
            MlflowClient(tracking_uri).update_run(run_id, status="RUNNING")
        except MlflowException:  # removed from the store since: start a new parent
            run_id = None
    if not run_id:
        run_id, _ = registry.get_or_create_run(
            tracking_uri,
            experiment_id,
            registry.run_key(f"workflow:{wf.name}", root.uri),
            wf.name,
            tags={"tcm.kind": "workflow", "tcm.workflow": wf.name, "tcm.workflow_storage": root.uri},
        )
        state = {
            "name": wf.name,
            "storage": root.uri,
            "tracking_uri": shown_uri,
            "experiment": wf.mlflow.experiment,
            "parent_run_id": run_id,
            "created_at": _now(),
            "attempts": state.get("attempts", []),
        }
    return state


def run_workflow(wf: Workflow, *, rerun_from: str | None = None, echo: Callable[[str], None] = print) -> WorkflowOutcome:
    """Run the stages of `wf` in order, skipping those recorded `done` (until one runs: all later ones run too).

    `rerun_from`: run this stage and every later one again even if done. A stage that raises is recorded
    `failed` with its one-line error, the parent run is marked FAILED, and StageFailed is raised."""
    import ray

    from pipelines.train import init_ray

    names = [s.name for s in wf.stages]
    if rerun_from is not None and rerun_from not in names:
        raise WorkflowError(f"--rerun-from {rerun_from!r}: no such stage (stages: {', '.join(names)})")
    if not ray.is_initialized():
        init_ray()  # the endpoint variables reach every actor (train.init_ray)
    root = storage.resolve(wf.storage).join(wf.name)
    tracking_uri = wf.tracking_uri()
    state = _open_parent(wf, root, tracking_uri)
    parent_run_id = state["parent_run_id"]
    attempt = {"started_at": _now(), "status": "running"}
    state["attempts"] = [*state.get("attempts", []), attempt]
    _write_json(root.join(WORKFLOW_FILE), state)
    parent = registry.RunLogger(tracking_uri, parent_run_id)
    parent.tags({f"stage.{n}.status": "pending" for n in names})
    parent.client.log_dict(parent_run_id, _jsonable(wf.model_dump(mode="json", by_alias=True)), "workflow/spec.json")
    echo(f"workflow {wf.name}: {len(names)} stages, records in {root.uri}, MLflow parent run {parent_run_id}")

    ctx = Context(wf, tracking_uri, parent_run_id, {}, echo)
    ran: list[str] = []
    skipped: list[str] = []
    for stage in wf.stages:
        loc = root.join(STAGES_DIR, f"{stage.name}.json")
        record = _read_json(loc) or {}
        spec = _jsonable(stage.model_dump(mode="json", by_alias=True))
        run_again = bool(ran) or stage.name == rerun_from  # after a stage ran, its successors run too
        if record.get("status") == "done" and not run_again:
            if record.get("spec") != spec:
                echo(f"warning: stage {stage.name} is done but its spec changed since; --rerun-from {stage.name} runs it again")
            echo(f"skipping {stage.name}: done at {record.get('finished_at')}")
            ctx.outputs[stage.name] = record.get("outputs", {})
            skipped.append(stage.name)
            parent.tags({f"stage.{stage.name}.status": "done"})
            continue
        started, t0 = _now(), time.monotonic()
        attempts = int(record.get("attempts", 0)) + 1
        base = {"stage": stage.name, "kind": stage.kind, "spec": spec, "started_at": started, "attempts": attempts}
        _write_json(loc, {**base, "status": "running"})
        parent.tags({f"stage.{stage.name}.status": "running"})
        echo(f"stage {stage.name} ({stage.kind}): running (attempt {attempts})")
        try:
            outputs = _jsonable(run_stage(stage, ctx))
        except BaseException as err:
            line = one_line(err)
            _write_json(loc, {**base, "status": "failed", "error": line, "traceback": traceback.format_exc(),
                              "finished_at": _now(), "outputs": {}})  # fmt: skip
            parent.tags({f"stage.{stage.name}.status": "failed", "workflow.failed_stage": stage.name})
            registry.finish_run(tracking_uri, parent_run_id, "FAILED")
            attempt.update(status="failed", failed_stage=stage.name, error=line, finished_at=_now(), ran=[*ran, stage.name])
            _write_json(root.join(WORKFLOW_FILE), state)
            if isinstance(err, Exception):
                raise StageFailed(stage.name, line) from err
            raise
        _write_json(loc, {**base, "status": "done", "outputs": outputs, "finished_at": _now(),
                          "duration_s": round(time.monotonic() - t0, 3)})  # fmt: skip
        parent.tags({f"stage.{stage.name}.status": "done"})
        ctx.outputs[stage.name] = outputs
        ran.append(stage.name)
        echo(f"stage {stage.name}: done in {time.monotonic() - t0:.1f} s")
    registry.finish_run(tracking_uri, parent_run_id, "FINISHED")
    attempt.update(status="done", finished_at=_now(), ran=ran, skipped=skipped)
    _write_json(root.join(WORKFLOW_FILE), state)
    echo(f"workflow {wf.name}: done (ran {', '.join(ran) or 'nothing'}; skipped {', '.join(skipped) or 'nothing'})")
    return WorkflowOutcome(wf.name, parent_run_id, tracking_uri, ran, skipped, ctx.outputs)


# ---------------------------------------------------------------------------------------------------- CLI


def pipeline_run_command(
    config: Path = typer.Option(..., "--config", help="Workflow YAML (jobs/pipelines/<name>.yaml)."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Override: vars.work=/tmp/w, storage=s3://b/p, <stage>.<field>=value, <stage>.set.<key>=value (repeatable).",
    ),
    rerun_from: str = typer.Option(None, "--rerun-from", help="Run this stage and every later one again even if done."),
) -> None:
    """Run a workflow's stages in order as one Ray job; a re-run resumes at the first stage that did not finish."""
    try:
        wf = load_workflow(config, set_)
        run_workflow(wf, rerun_from=rerun_from, echo=typer.echo)
    except (ConfigError, WorkflowError, storage.StorageError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
