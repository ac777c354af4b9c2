"""MLflow conventions shared by every stage that makes a run (train, tune, evaluate, retrain, workflow, cross-eval).

    experiment: tag `mlflow.experimentKind = custom_model_development` -> MLflow 3's UI opens the model-training
                view (runs, metrics, charts), not the GenAI one (traces, token usage)
    run:        source tags (`mlflow.source.name`, `.type`, `.git.commit` in a git checkout) at creation
    data:       one dataset input per ingested folder + split: the folder's URI as source, the manifest's sha256
                as digest, the split as context (the UI's "Dataset" column)
    metrics:    one naming scheme: `train/…` (training epochs), `val/…` (validation during training and sweeps),
                `test/…` (evaluation); VAL_HMEAN is the key sweeps rank trials by

Imports MLflow only inside functions: `tcm --help` must not pay for it.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipelines import storage

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by the MLflow 3 UI (mlflow/server/js: experimentKind)
EXPERIMENT_KIND = "custom_model_development"  # the model-training view ("genai_development" is the GenAI one)
VAL_HMEAN = "val/hmean"  # what a sweep ranks trials by (reported to Tune and logged to MLflow under this name)
DATA_CONTEXT_TAG = "mlflow.data.context"  # = mlflow.data.dataset_input context key: the UI shows it per input
MANIFEST_SHA_TAG = "tcm.manifest_sha256"  # the full sha256 (an MLflow dataset digest holds at most 36 chars)
_DIGEST_CHARS = 36  # mlflow.utils.validation.MAX_DATASET_DIGEST_SIZE
REPO = Path(__file__).resolve().parents[1]


def client(tracking_uri: str) -> Any:
    """An `MlflowClient` for `tracking_uri` (MLflow imported on first use)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


def mark_experiment(tracking_uri: str, experiment_id: str) -> None:
    """Tag the experiment so MLflow 3's UI opens it in the model-training view (idempotent)."""
    c = client(tracking_uri)
    if c.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        c.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


@functools.cache
def git_commit() -> str | None:
    """HEAD of the checkout the pipelines run from; None outside a git checkout (an installed wheel)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def source_tags() -> dict[str, str]:
    """`mlflow.source.*` tags of a run made by this process: the command line's program, the git commit."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    command = " ".join([program, *sys.argv[1:2]]) if program == "tcm" else program  # `tcm train`, not its options
    tags = {MLFLOW_SOURCE_NAME: command, MLFLOW_SOURCE_TYPE: "LOCAL"}
    if (commit := git_commit()) is not None:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def manifest_sha256(uri: str) -> str:
    """The sha256 an ingested folder's manifest records (raises StorageError / ValueError when unreadable)."""
    manifest = json.loads(storage.read_bytes(storage.resolve(uri).join("manifest.json")))
    return str(manifest.get("sha256", "unknown"))


def log_datasets(tracking_uri: str, run_id: str, refs: Iterable[Any]) -> None:
    """One MLflow dataset input per ref (an ingested folder + split): source = its URI (credentials stripped),
    digest = its manifest's sha256, context = the split. Logged again on a resumed run, MLflow keeps one."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for ref in refs:
        uri = storage.strip_credentials(ref.uri)
        sha = manifest_sha256(ref.uri)
        with warnings.catch_warnings():  # MLflow registers its local source twice and warns it is ambiguous
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
            source = resolve_dataset_source(uri)
        # the split in the name: MLflow keeps one input per (name, digest), and the splits of a folder share its
        # manifest (train and val of one folder would otherwise show as one input)
        name = f"{Path(uri.rstrip('/')).name or uri}/{ref.split}"
        dataset = MetaDataset(source, name=name, digest=sha[:_DIGEST_CHARS])
        tags = [InputTag(DATA_CONTEXT_TAG, ref.split), InputTag(MANIFEST_SHA_TAG, sha)]
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags))
    if inputs:
        # the client form of `mlflow.log_input(dataset, context=split)`: workers and drivers log by run id, never
        # through the fluent "active run" of the process
        client(tracking_uri).log_inputs(run_id, datasets=inputs)


def training_progress(tracking_uri: str, experiment: str, key: str, epochs: int) -> Callable[[], str]:
    """A poll for Console.stage: the run `key`'s latest epoch, loss and validation hmean, read from MLflow
    (rank 0 logs them every epoch)."""
    from pipelines.registry import RUN_KEY_TAG

    def poll() -> str:
        c = client(tracking_uri)
        exp = c.get_experiment_by_name(experiment)
        runs = c.search_runs([exp.experiment_id], f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=1) if exp else []
        m = runs[0].data.metrics if runs else {}
        if "epoch" not in m:
            return "starting"
        parts = [f"epoch {int(m['epoch'])}/{epochs}", f"loss {m.get('train/loss', float('nan')):.3f}"]
        if VAL_HMEAN in m:
            parts.append(f"val hmean {m[VAL_HMEAN]:.3f}")
        return ", ".join(parts)

    return poll


def sweep_progress(tracking_uri: str, experiment: str, key: str, trials: int) -> Callable[[], str]:
    """A poll for Console.stage: how many of the sweep's trials (child runs of the parent `key`) ended, and the
    best validation hmean so far."""
    from pipelines.registry import PARENT_TAG, RUN_KEY_TAG

    def poll() -> str:
        c = client(tracking_uri)
        exp = c.get_experiment_by_name(experiment)
        parent = c.search_runs([exp.experiment_id], f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=1) if exp else []
        if not parent:
            return "starting"
        children = c.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent[0].info.run_id}'")
        ended = sum(r.info.status in ("FINISHED", "KILLED", "FAILED") for r in children)
        scores = [r.data.metrics[VAL_HMEAN] for r in children if VAL_HMEAN in r.data.metrics]
        best = f", best val hmean {max(scores):.3f}" if scores else ""
        return f"{ended}/{trials} trials ended{best}"

    return poll
