"""MLflow: experiments, runs keyed by the training run they record, metrics/params/artifacts, models, aliases.

Runs are addressed by a *run key* (`<name>@<storage>` of the Ray Train run, hashed into the tag `tcm.run_key`)
so that a training run started again — after a crash, or a Tune trial retried — finds and continues the SAME
MLflow run instead of opening a second one. Workers log through `RunLogger` (an `MlflowClient` with an
explicit run id: no fluent "active run" state on Ray workers, and only rank 0 ever builds one).

Models are logged with `mlflow.pytorch.log_model` and carry the plain checkpoint (state dict + config JSON) as
`extra_files`, so `load_model("models:/tcm-detector@champion")` rebuilds the detector with
`torch.load(weights_only=True)` and never unpickles code.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from pipelines import storage, tracking
from pipelines.config import MlflowConfig
from tcm.config import DetectorConfig
from tcm.recognition.config import RecognizerConfig

if TYPE_CHECKING:  # torch and MLflow are imported where used: `tcm --help` loads this module
    from torch import nn

log = logging.getLogger(__name__)

RUN_KEY_TAG = "tcm.run_key"
MODEL_URI_TAG = "tcm.model_uri"
PROMOTION_TAG = "tcm.promotion"  # on a version (and its run) registered without the alias: why
VAL_HMEAN = "val/hmean"  # the validation hmean training logs: the one name the promotion floor and predict read
PARENT_TAG = "mlflow.parentRunId"  # = mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID; the UI nests children by it
_BATCH = 900  # MlflowClient.log_batch accepts at most 1000 metrics / 100 params per call


def absolute_tracking_uri(uri: str) -> str:
    """`sqlite:///rel.db` and plain paths made absolute, so Ray workers (other cwd) reach the same store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    if "://" not in uri and not uri.startswith(("databricks", "sqlite")):
        return Path(uri).resolve().as_uri()
    return uri


def default_artifact_location(mcfg: MlflowConfig, storage_uri: str) -> str:
    """Artifacts go beside the checkpoints unless the config names a location."""
    if mcfg.artifact_location:
        return mcfg.artifact_location
    if urlparse(storage_uri).scheme == "s3":
        # never `s3://key:secret@…`: the location is stored in MLflow, and its boto3 reads keys from the env
        return storage.strip_credentials(storage_uri).rstrip("/") + "/mlflow-artifacts"
    return Path(urlparse(storage_uri).path if storage_uri.startswith("file://") else storage_uri).resolve().joinpath(
        "mlflow-artifacts"
    ).as_uri()


def store_artifact_location(mcfg: MlflowConfig, tracking_uri: str) -> str | None:
    """Where an experiment created outside training keeps artifacts: the config's location, else beside a
    sqlite store's file (never the current folder), else the tracking server's default (None)."""
    if mcfg.artifact_location:
        return mcfg.artifact_location
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///") :]).resolve().parent.joinpath("mlflow-artifacts").as_uri()
    return None


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None = None, *, configured: bool = True) -> str:
    """Id of the experiment `name`, created with `artifact_location` when new (an existing one keeps its own).

    `configured`: the location is the user's (warn when the existing experiment stores elsewhere), not a default
    derived from the storage path or the store (train and evaluate derive different ones; no warning then)."""
    client = tracking.client(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if configured and artifact_location and exp.artifact_location.rstrip("/") != artifact_location.rstrip("/"):
            log.warning(
                "MLflow experiment %r already stores artifacts at %s (not %s)",
                name,
                exp.artifact_location,
                artifact_location,
            )
        if exp.tags.get(tracking.EXPERIMENT_KIND_TAG) != tracking.EXPERIMENT_KIND:  # made before the tag existed
            client.set_experiment_tag(exp.experiment_id, tracking.EXPERIMENT_KIND_TAG, tracking.EXPERIMENT_KIND)
        return exp.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(
            name, artifact_location=artifact_location, tags={tracking.EXPERIMENT_KIND_TAG: tracking.EXPERIMENT_KIND}
        )
    except MlflowException:  # created concurrently by another trial
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def run_key(name: str, storage_uri: str) -> str:
    return hashlib.sha256(f"{name}@{storage_uri.rstrip('/')}".encode()).hexdigest()[:32]


def find_run(tracking_uri: str, experiment_id: str, key: str) -> str | None:
    runs = tracking.client(tracking_uri).search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=2, order_by=["start_time ASC"]
    )
    return runs[0].info.run_id if runs else None


def get_or_create_run(
    tracking_uri: str,
    experiment_id: str,
    key: str,
    run_name: str,
    *,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> tuple[str, bool]:
    """(run id, resumed): the run recorded under `key`, marked RUNNING again, or a new one."""
    client = tracking.client(tracking_uri)
    run_id = find_run(tracking_uri, experiment_id, key)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        return run_id, True
    all_tags = {RUN_KEY_TAG: key, **tracking.source_tags(), **(tags or {})}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id, False


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    tracking.client(tracking_uri).set_terminated(run_id, status=status)


class RunLogger:
    """Logs into one existing run by id (used on rank 0 only)."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = tracking.client(tracking_uri)

    def params(self, params: Mapping[str, Any]) -> None:
        """Log params; on a resumed run, keep what is there and tag the keys whose value changed."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        changed = sorted(k for k, v in params.items() if k in existing and existing[k] != str(v)[:6000])
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i : i + 100])
        if changed:
            log.warning("resumed MLflow run %s: params changed since the first attempt: %s", self.run_id, changed)
            self.tags({"tcm.params_changed_on_resume": ",".join(changed)[:5000]})

    def metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH])

    def tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)


def log_model(
    tracking_uri: str,
    run_id: str,
    model: nn.Module,
    detector: DetectorConfig | RecognizerConfig,
    *,
    meta: Mapping[str, Any] | None = None,
    experiment: Mapping[str, Any] | None = None,
    name: str = "model",
) -> str:
    """`mlflow.pytorch.log_model` into the run, with the plain checkpoint as extra files, a tensor signature and
    a small input example. Returns the model URI."""
    import mlflow
    import torch

    from pipelines import checkpoint as ckpt_io

    mlflow.set_tracking_uri(tracking_uri)
    signature, example = model_signature(model, detector)
    with tempfile.TemporaryDirectory(prefix="tcm-model-") as tmp:
        folder = ckpt_io.save_checkpoint(Path(tmp) / "checkpoint", model, detector, meta=meta, experiment=experiment)
        extra = [str(folder / n) for n in (ckpt_io.MODEL_FILE, ckpt_io.CONFIG_FILE, ckpt_io.META_FILE)]
        # MLflow validates the input example by serving it through its pytorch pyfunc, which takes single-tensor
        # outputs only: on our dict of maps it always fails, as a warning (tcm serves from extra_files/ instead)
        serving_check = logging.getLogger("mlflow.models.model")
        level = serving_check.level
        serving_check.setLevel(logging.ERROR)
        try:
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pytorch.log_model(
                    copy.deepcopy(model).cpu().eval(),  # a copy: the caller's model stays on its device
                    name=name,
                    extra_files=extra,
                    # pickle: 'pt2' (torch.export, MLflow's default) needs an exportable graph and an input example;
                    # tcm loaders never unpickle it anyway (they read extra_files/ with weights_only)
                    serialization_format="pickle",
                    # stated, not inferred: inference re-imports the model in a subprocess (slow, and needs network)
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "open_clip_torch", "numpy"],
                    signature=signature,
                    input_example=example,
                )
        finally:
            serving_check.setLevel(level)
    tracking.client(tracking_uri).set_tag(run_id, MODEL_URI_TAG, info.model_uri)
    return info.model_uri


def model_signature(model: nn.Module, model_cfg: DetectorConfig | RecognizerConfig) -> tuple[Any, Any]:
    """(signature, input example): a normalised image batch in, the model's output tensors out (names and shapes
    from one forward pass on the example; -1 = any size). Detector: a 64 x 64 example (a multiple of the 32-px
    stride), any H and W; recogniser: its fixed input size (crops are stretched to it)."""
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    match model_cfg:
        case RecognizerConfig(image_size=(H, W)):
            example = np.zeros((1, 3, H, W), dtype=np.float32)  # (B, 3, H, W) normalised crops
            in_shape = (-1, 3, H, W)
        case _:
            example = np.zeros((1, 3, 64, 64), dtype=np.float32)  # (B, 3, H, W), mean-subtracted, std-divided
            in_shape = (-1, 3, -1, -1)
    module = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        outputs = module(torch.from_numpy(example))
    spec_out = [
        TensorSpec(np.dtype(np.float32), (-1, *([-1] * (v.dim() - 1))), k)
        for k, v in outputs.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    ]
    return ModelSignature(Schema([TensorSpec(np.dtype(np.float32), in_shape)]), Schema(spec_out)), example


def register_model(tracking_uri: str, model_uri: str, name: str, alias: str, tags: Mapping[str, str] | None = None) -> str:
    """Register `model_uri` as a new version of `name` and point `alias` at it (no floor: retrain's challenger)."""
    version = register_version(tracking_uri, model_uri, name, tags)
    tracking.client(tracking_uri).set_registered_model_alias(name, alias, version)
    return version


def register_version(tracking_uri: str, model_uri: str, name: str, tags: Mapping[str, str] | None = None) -> str:
    """Register `model_uri` as a new version of `name`, no alias. Returns the version."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return str(mlflow.register_model(model_uri, name, tags=dict(tags or {})).version)


PAIR_DETECTOR_TAG = "tcm.pair.detector"  # on a pair's evaluation run: the detector's `name/version`
PAIR_RECOGNIZER_TAG = "tcm.pair.recognizer"  # ... and the recogniser's
SPOT_RECOGNIZER_TAG = "spot.recognizer"  # on a detector's model version: the recogniser it was last evaluated with
SPOT_DETECTOR_TAG = "spot.detector"  # on a recogniser's model version: the detector it was last evaluated with
_REGISTRY_URI = re.compile(r"models:/([^/@]+)(?:/([0-9]+)|@([^/]+))/?")  # models:/name/3, models:/name@champion


def registered_version(tracking_uri: str, uri: str) -> tuple[str, str] | None:
    """(name, version) of a `models:/name/<version>` or `models:/name@<alias>` URI (the alias resolved now);
    None for anything else (runs:/, checkpoint folders, logged-model ids models:/m-…)."""
    match = _REGISTRY_URI.fullmatch(uri)
    if match is None:
        return None
    name, version, alias = match.groups()
    if alias is not None:
        version = tracking.client(tracking_uri).get_model_version_by_alias(name, alias).version
    return name, str(version)


def pair_run_tags(tracking_uri: str, det: str, rec: str) -> dict[str, str]:
    """`tcm.pair.detector` / `tcm.pair.recognizer` = `name/version` for each of the pair given by registry URI."""
    tags = {}
    for key, uri in ((PAIR_DETECTOR_TAG, det), (PAIR_RECOGNIZER_TAG, rec)):
        if (resolved := registered_version(tracking_uri, uri)) is not None:
            tags[key] = "/".join(resolved)
    return tags


def tag_pair(tracking_uri: str, det: str, rec: str) -> tuple[str, str]:
    """Record on the registry which versions work together: the detector's model version gets
    `spot.recognizer = name/version` of the recogniser, the recogniser's `spot.detector` the detector's (a
    later pair evaluation overwrites them). Both must be registry URIs. Returns the two `name/version`."""
    client = tracking.client(tracking_uri)
    d, r = registered_version(tracking_uri, det), registered_version(tracking_uri, rec)
    for flag, uri, resolved in (("detector", det, d), ("recogniser", rec, r)):
        if resolved is None:
            raise ValueError(f"{flag} {uri}: not a registry URI (models:/name/<version> or models:/name@<alias>)")
    assert d is not None and r is not None
    client.set_model_version_tag(d[0], d[1], SPOT_RECOGNIZER_TAG, "/".join(r))
    client.set_model_version_tag(r[0], r[1], SPOT_DETECTOR_TAG, "/".join(d))
    return "/".join(d), "/".join(r)


def promotion_refusal(hmean: float | None, floor: float, what: str = "validation hmean") -> str | None:
    """None when a model may take an alias, else why not: its metric is missing or below the floor. A floor of 0
    turns the gate off (a smoke run, a workflow that trains without validation): a missing metric then passes."""
    if hmean is None and floor <= 0:
        return None
    if hmean is None:
        return f"no {what} logged (nothing shows the model detects text); mlflow.promote_min_hmean is {floor:g}"
    if hmean < floor:
        return f"{what} {hmean:.4f} < mlflow.promote_min_hmean {floor:g}"
    return None


def set_alias_if_good(
    tracking_uri: str,
    name: str,
    version: str,
    alias: str,
    *,
    run_id: str | None,
    hmean: float | None,
    floor: float,
    what: str = "validation hmean",
) -> bool:
    """Point `alias` at `version` when its metric reaches the floor; else leave the alias where it is and say why
    (a warning, the tag `tcm.promotion` on the version and on its run). Returns whether the alias was set."""
    client = tracking.client(tracking_uri)
    refusal = promotion_refusal(hmean, floor, what)
    if refusal is None:
        client.set_registered_model_alias(name, alias, version)
        return True
    note = f"registered without alias {alias!r}: {refusal}"
    log.warning("%s version %s %s", name, version, note)
    client.set_model_version_tag(name, version, PROMOTION_TAG, note)
    if run_id:
        client.set_tag(run_id, PROMOTION_TAG, note)
    return False


def register_promoted(
    tracking_uri: str,
    model_uri: str,
    name: str,
    alias: str,
    tags: Mapping[str, str] | None = None,
    *,
    run_id: str | None,
    floor: float,
    hmean: float | None = None,
    what: str = "validation hmean",
    metric: str = VAL_HMEAN,
) -> tuple[str, bool]:
    """Register `model_uri` as a new version of `name`; `alias` only when the metric reaches the floor (default:
    the run's logged `metric`, val/hmean for a detector, val/accuracy for a recogniser). Returns (version, alias set)."""
    version = register_version(tracking_uri, model_uri, name, tags)
    if hmean is None and run_id:
        hmean = logged_val_hmean(tracking_uri, run_id, metric)
    ok = set_alias_if_good(tracking_uri, name, version, alias, run_id=run_id, hmean=hmean, floor=floor, what=what)
    return version, ok


def logged_val_hmean(tracking_uri: str, run_id: str, metric: str = VAL_HMEAN) -> float | None:
    """The run's latest logged validation metric (None: it never validated)."""
    return tracking.client(tracking_uri).get_run(run_id).data.metrics.get(metric)


def run_model_uri(tracking_uri: str, run_id: str) -> str | None:
    return tracking.client(tracking_uri).get_run(run_id).data.tags.get(MODEL_URI_TAG)


@dataclass
class LoadedModel:
    model: nn.Module  # in eval mode, on CPU
    detector: DetectorConfig | RecognizerConfig  # the model's config (pipelines.tasks.task_for picks its task)
    experiment: dict[str, Any] | None  # the training run's resolved config (test scale, protocol), when recorded
    meta: dict[str, Any] | None = None  # the checkpoint's meta.json: epoch, global_step, mlflow_run_id, val


def load_model(uri: str, tracking_uri: str | None = None) -> LoadedModel:
    """A detector or recogniser from `models:/…`, `runs:/…` (weights only) or a checkpoint folder (path, file://,
    s3://)."""
    import mlflow

    from pipelines import checkpoint as ckpt_io
    from pipelines.tasks import task_for

    if uri.startswith(("models:/", "runs:/")):
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        with tempfile.TemporaryDirectory(prefix="tcm-model-") as tmp:
            folder = download_model_files(uri, tmp)
            if not folder.is_dir():
                raise ckpt_io.CheckpointError(_no_state_dict(uri, Path(tmp)))
            ckpt = ckpt_io.read_checkpoint(folder, with_train_state=False)
    else:
        ckpt = ckpt_io.load_checkpoint(uri)
    model = task_for(ckpt.detector).build_model(ckpt.detector, pretrained=False)  # weights from the checkpoint
    ckpt_io.load_model_state(model, ckpt, ckpt.detector)
    return LoadedModel(model.eval(), ckpt.detector, ckpt.experiment, ckpt.meta)


def _no_state_dict(uri: str, downloaded: Path) -> str:
    """Why `uri` gave no extra_files/: its files are gone from the artifact store (nothing came down at all),
    or it is a model tcm did not log (files, but no state dict)."""
    if not any(p.is_file() for p in downloaded.rglob("*")):
        return (f"{uri}: model files missing: nothing at {_artifact_location(uri)} (the registry still lists the "
                "model; its artifact store was emptied or replaced)")  # fmt: skip
    return f"{uri}: not logged by tcm (no extra_files/ with the state dict at {_artifact_location(uri)})"


def _artifact_location(uri: str) -> str:
    """Where the artifact store keeps `uri`'s files (the URI itself when MLflow cannot say)."""
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    try:
        repo = ModelsArtifactRepository if uri.startswith("models:/") else RunsArtifactRepository
        return storage.redact_uri(repo.get_underlying_uri(uri))
    except Exception:  # an unknown name or run: the download already said what it could
        return uri


def download_model_files(uri: str, dst: str) -> Path:
    """The model's extra_files/ folder: fetched alone where the URI form allows, else with the whole model."""
    import mlflow

    from pipelines import checkpoint as ckpt_io

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri.rstrip("/") + "/extra_files", dst_path=dst))
    except mlflow.exceptions.MlflowException:
        pass  # logged-model ids (models:/m-…) take no sub-path
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst)) / "extra_files"
    except mlflow.exceptions.MlflowException as err:
        raise ckpt_io.CheckpointError(f"{uri}: cannot fetch model ({err.message})") from None
