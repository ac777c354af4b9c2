"""One pipeline, two tasks: the small interface train / tune / evaluate / predict / the registry call, which
detection (TCM) and recognition (CLIP4STR) each implement.

    task = task_for(cfg.tcm_config())            # a `match` on the model config's type, no string registry
    model = task.build_model(model_cfg, pretrained=True)
    ds = task.train_dataset(cfg, epoch)          # Ray Data: rows -> encoded numpy batches on CPU workers
    losses = task.losses(ddp, model, batch, amp) # {"loss": ..., parts}: the training step's forward, via DDP
    rows = task.predict_rows(model, decoder, shard, cfg, device, keep)   # decode: JSON-able prediction rows
    metrics = task.score(rows, cfg, out_dir, ...)                         # metric (+ artifact files)

Everything else (the Ray Train loop, checkpoints, MLflow, registration, Tune) is shared. The pieces a task
owns are the ones that differ: what a row becomes on the CPU workers, how the model computes its loss, how its
outputs are decoded and how they are scored, and what a sweep varies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from tcm.config import DetectorConfig
from tcm.recognition.config import RecognizerConfig


class Task(Protocol):
    kind: str  # "detection" | "recognition": MLflow tag tcm.task
    primary_metric: str  # the validation metric runs are compared by (higher is better)
    report_metrics: tuple[str, ...]  # validation metrics reported to Ray Train / Tune as val_<name>

    def build_model(self, model_cfg: Any, *, pretrained: bool) -> torch.nn.Module: ...

    def decoder(self, model_cfg: Any) -> Any:
        """What turns the network's outputs into predictions (detection: the head's codec; recognition: the
        model's tokenizer)."""

    def train_dataset(self, cfg: Any, epoch: int) -> Any:
        """The augmented, encoded training stream (Ray Dataset of numpy batches with an `image` column)."""

    def eval_dataset(self, cfg: Any, ref: Any, model_cfg: Any) -> Any:
        """Eval rows of one ingested dataset (ids and ground truth kept beside the normalised image)."""

    def train_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module DDP wraps for the training forward (its parameters are the model's)."""

    def losses(
        self, ddp: torch.nn.Module, model: torch.nn.Module, batch: dict[str, torch.Tensor], amp: AbstractContextManager
    ) -> dict[str, torch.Tensor]:
        """One training step's losses (`loss` = what is back-propagated), the forward through `ddp`."""

    def param_groups(self, model: torch.nn.Module, cfg: Any) -> list[dict[str, Any]]: ...

    def predict_rows(
        self, model: torch.nn.Module, decoder: Any, shard: Any, cfg: Any, device: torch.device,
        keep: Callable[[str], bool],
    ) -> list[Any]:
        """Predictions of the eval rows `keep(id)` selects; picklable rows (gathered across workers)."""

    def score(
        self, rows: Sequence[Any], cfg: Any, out_dir: Path | None, *, num_samples: int = 0,
        images: Callable[[Sequence[str]], Mapping[str, np.ndarray]] | None = None,
    ) -> dict[str, float]:
        """Metrics over all rows (must hold `primary_metric`); with `out_dir`, the artifact files too."""

    def predict_dataset(self, ds: Any, model_uri: str, tracking_uri: str | None, cfg: Any) -> list[Any]:
        """`tcm evaluate`'s batch inference: an actor pool over eval rows, each actor loading the model once."""

    def search_space(self, cfg: Any) -> dict[str, Any]:
        """Ray Tune's param space from `cfg.tune` (detection: prompts and LR factors; recognition: text freeze
        depth, decoder LR factor, permutation count)."""

    def trial_overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's sampled params as dotted config keys."""


def task_for(model_cfg: DetectorConfig | RecognizerConfig) -> Task:
    """The task of a model config (a tcm dataclass: `ExperimentConfig.tcm_config()` or a checkpoint's)."""
    from pipelines.tasks.detection import DetectionTask
    from pipelines.tasks.recognition import RecognitionTask

    match model_cfg:
        case DetectorConfig():
            return DetectionTask()
        case RecognizerConfig():
            return RecognitionTask()
        case _:
            raise TypeError(f"no task for a {type(model_cfg).__name__}")
