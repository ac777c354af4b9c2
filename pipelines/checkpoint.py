"""Checkpoints as plain files: state dicts (read back with `torch.load(weights_only=True)`) plus JSON.

A checkpoint folder holds
    model.pt        the detector's state dict (tensors only)
    train_state.pt  optimiser and grad-scaler state dicts (absent in exported weights)
    config.json     {"model": the DetectorConfig as JSON, "experiment": the resolved ExperimentConfig or null}
    meta.json       {"epoch", "global_step", "mlflow_run_id", ...}: where the run was and whom it logs to

Loading into a model built from another configuration fails with a `CheckpointMismatch` that names the config
fields that differ (`model.tcm.num_prompts: checkpoint 4, config 18`), not a tensor-shape traceback. Fields that
do not change any tensor (decode thresholds, the CLIP weights path) only warn.
"""

from __future__ import annotations

import json
import pickle
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from torch import nn

from pipelines import storage
from pipelines.config import flatten, model_config_from_dict, model_config_to_dict
from tcm.config import DetectorConfig
from tcm.recognition.config import RecognizerConfig

MODEL_FILE = "model.pt"
TRAIN_STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"
FORMAT_VERSION = 1  # bump when the folder layout changes


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing or unreadable. The message names it."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint does not fit the configured model. The message names the differing config fields."""


@dataclass
class Checkpoint:
    """A checkpoint read back from disk."""

    path: str
    model_state: dict[str, torch.Tensor]
    detector: DetectorConfig | RecognizerConfig  # the model's config (a recogniser's when config.json says so)
    meta: dict[str, Any]
    experiment: dict[str, Any] | None
    train_state: dict[str, Any] | None

    @property
    def epoch(self) -> int:
        return int(self.meta.get("epoch", -1))


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    detector: DetectorConfig | RecognizerConfig,
    *,
    meta: Mapping[str, Any] | None = None,
    experiment: Mapping[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> Path:
    """Write a checkpoint folder (created). `model` is the bare module, not its DDP wrapper."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, directory / MODEL_FILE)
    if optimizer is not None:
        train_state: dict[str, Any] = {"optimizer": optimizer.state_dict()}
        if scaler is not None:
            train_state["scaler"] = scaler.state_dict()
        torch.save(train_state, directory / TRAIN_STATE_FILE)
    # recorded URIs never keep a `user:secret@` part (a redacted s3://***@bucket/… still resolves, env keys)
    experiment = storage.redact_uris(dict(experiment)) if experiment else None
    config = {"model": model_config_to_dict(detector), "experiment": experiment}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    meta = storage.redact_uris({"format": FORMAT_VERSION, **(meta or {})})
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def read_checkpoint(directory: str | Path, *, with_train_state: bool = True) -> Checkpoint:
    """Read a local checkpoint folder. Only tensors and plain containers are unpickled (weights_only)."""
    directory = Path(directory)
    for name in (MODEL_FILE, CONFIG_FILE, META_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: not a checkpoint folder ({name} missing)")
    try:
        model_state = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True)
        train_state = None
        if with_train_state and (directory / TRAIN_STATE_FILE).is_file():
            train_state = torch.load(directory / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
        config = json.loads((directory / CONFIG_FILE).read_text())
        meta = json.loads((directory / META_FILE).read_text())
    except pickle.UnpicklingError as err:  # weights_only refused a non-tensor object: never run its code
        reason = next((ln.strip() for ln in str(err).splitlines() if "Unsupported global" in ln), "not plain weights")
        raise CheckpointError(f"{directory}: cannot read checkpoint, it holds more than weights ({reason})") from None
    except (OSError, RuntimeError, ValueError) as err:  # truncated files, bad JSON
        raise CheckpointError(f"{directory}: cannot read checkpoint ({err})") from None
    detector = model_config_from_dict(config["model"], source=str(directory / CONFIG_FILE))
    return Checkpoint(str(directory), model_state, detector, meta, config.get("experiment"), train_state)


@contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local folder with the checkpoint at `uri` (plain path, file:// or s3://), removed afterwards if copied."""
    loc = storage.resolve(uri)
    if isinstance(loc.fs, pafs.LocalFileSystem):
        yield Path(loc.path)
        return
    with tempfile.TemporaryDirectory(prefix="tcm-ckpt-") as tmp:
        try:
            pafs.copy_files(loc.path, tmp, source_filesystem=loc.fs, destination_filesystem=pafs.LocalFileSystem())
        except OSError as err:
            raise CheckpointError(f"{loc.uri}: cannot copy checkpoint ({err})") from None
        yield Path(tmp)


def load_checkpoint(uri: str, *, with_train_state: bool = False) -> Checkpoint:
    with local_copy(uri) as directory:
        return read_checkpoint(directory, with_train_state=with_train_state)


def restore_train_state(
    ckpt: Checkpoint, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None
) -> None:
    """Put the optimiser (moments, step counts, each group's lr) and the grad scaler back as the checkpoint saved
    them. A checkpoint without train state (exported weights) leaves both as built."""
    if not ckpt.train_state:
        return
    optimizer.load_state_dict(ckpt.train_state["optimizer"])
    if scaler is not None and ckpt.train_state.get("scaler"):
        scaler.load_state_dict(ckpt.train_state["scaler"])


def config_diff(checkpoint: Any, current: Any) -> list[tuple[str, Any, Any]]:
    """(dotted field, checkpoint value, current value) for every model field that differs."""
    a = flatten(model_config_to_dict(checkpoint), "model.")
    b = flatten(model_config_to_dict(current), "model.")
    return [(key, a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def load_model_state(model: nn.Module, ckpt: Checkpoint, current: DetectorConfig | RecognizerConfig) -> None:
    """Load weights into `model` (built from `current`), naming config differences instead of shapes.

    Config differences that leave every tensor the same (post-processing, weights path) are allowed and warned
    about; any tensor difference raises CheckpointMismatch listing the fields (and the first tensors).
    """
    diff = config_diff(ckpt.detector, current)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ckpt.model_state))
    unexpected = sorted(set(ckpt.model_state) - set(expected))
    reshaped = sorted(
        k for k in set(expected) & set(ckpt.model_state) if expected[k].shape != ckpt.model_state[k].shape
    )
    if missing or unexpected or reshaped:
        fields = "; ".join(f"{k}: checkpoint {a!r}, config {b!r}" for k, a, b in diff) or "no config field differs"
        tensors = [f"{k} {tuple(ckpt.model_state[k].shape)} vs {tuple(expected[k].shape)}" for k in reshaped[:3]]
        tensors += [f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]]
        raise CheckpointMismatch(
            f"{ckpt.path}: checkpoint was trained with a different model configuration: {fields} "
            f"(tensors: {', '.join(tensors)})"
        )
    if diff:
        warnings.warn(
            f"{ckpt.path}: model config differs in fields that change no weights: "
            + "; ".join(f"{k}: checkpoint {a!r}, config {b!r}" for k, a, b in diff),
            stacklevel=2,
        )
    model.load_state_dict(ckpt.model_state)
