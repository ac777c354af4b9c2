"""Detection (TCM): the task interface over the detector's existing pieces (augment.py's codec targets,
evaluate.py's decode and ICDAR scoring). Behaviour and metric names are those the pipeline always had."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tcm.config import DetectorConfig


class DetectionTask:
    kind = "detection"
    primary_metric = "hmean"
    report_metrics = ("hmean", "precision", "recall")

    def build_model(self, model_cfg: DetectorConfig, *, pretrained: bool) -> torch.nn.Module:
        from tcm.build import build_detector

        return build_detector(model_cfg, pretrained=pretrained)

    def decoder(self, model_cfg: DetectorConfig) -> Any:
        from tcm.build import build_codec

        return build_codec(model_cfg.head)

    def train_dataset(self, cfg: Any, epoch: int) -> Any:
        from pipelines import augment
        from pipelines.train import train_split

        d = cfg.data
        return augment.train_dataset(
            [(ref.uri, ref.weight) for ref in d.train],
            train_split(cfg),
            cfg.detector(),
            d.augment,
            d.seed,
            d.fraction,
            epoch=epoch,
            batch_size=d.map_batch_size,
            num_workers=d.num_workers,
            cpus_per_task=d.cpus_per_task,
            object_store_budget_gib=d.object_store_budget_gib,
            deterministic=d.deterministic,
        )

    def eval_dataset(self, cfg: Any, ref: Any, model_cfg: DetectorConfig) -> Any:
        from pipelines import augment

        d = cfg.data
        return augment.eval_dataset(
            ref.uri,
            ref.split,
            model_cfg,
            long_side=d.val_long_side,
            short_side=d.val_short_side,
            max_side=d.val_canvas,
            batch_size=d.map_batch_size,
            num_workers=d.num_workers,
            cpus_per_task=d.cpus_per_task,
        )

    def train_module(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # the detector's forward gives the maps; its loss runs outside DDP on them

    def losses(
        self, ddp: torch.nn.Module, model: torch.nn.Module, batch: dict[str, torch.Tensor], amp: AbstractContextManager
    ) -> dict[str, torch.Tensor]:
        x = batch.pop("image")  # (B, 3, S, S) normalised; the rest are the codec's targets
        with amp:
            outputs = ddp(x)
        # losses in float32: BCE/Dice on half-precision maps underflow (and BCE refuses autocast)
        return model.loss({k: v.float() for k, v in outputs.items()}, batch)

    def param_groups(self, model: torch.nn.Module, cfg: Any) -> list[dict[str, Any]]:
        from tcm.optim import param_groups

        o = cfg.optim
        return param_groups(model, o.lr, o.weight_decay, o.image_encoder_lr_factor, o.text_encoder_lr_factor)

    def predict_rows(
        self, model: torch.nn.Module, decoder: Any, shard: Any, cfg: Any, device: torch.device,
        keep: Callable[[str], bool],
    ) -> list[Any]:
        from pipelines.evaluate import predict_rows

        return predict_rows(model, decoder, shard, cfg, device, keep=keep)

    def score(
        self, rows: Sequence[Any], cfg: Any, out_dir: Path | None, *, num_samples: int = 0,
        images: Callable[[Sequence[str]], Mapping[str, np.ndarray]] | None = None,
    ) -> dict[str, float]:
        from pipelines.evaluate import score_pairs

        return score_pairs(rows, cfg.eval.protocol, out_dir, num_overlays=num_samples, images=images)

    def predict_dataset(self, ds: Any, model_uri: str, tracking_uri: str | None, cfg: Any) -> list[Any]:
        from pipelines.evaluate import predict_dataset

        return predict_dataset(ds, model_uri, tracking_uri, cfg)

    def search_space(self, cfg: Any) -> dict[str, Any]:
        from pipelines.tune import search_space

        return search_space(cfg)

    def trial_overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        from pipelines.tune import trial_overrides

        return trial_overrides(params)
