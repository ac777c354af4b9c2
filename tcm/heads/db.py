"""DBNet head: FPN-C neck, probability and threshold branches at full input resolution, and the DB loss.

forward(feats C2..C5) -> {"prob_logits": (B, 1, H, W) logits of P, "thresh": (B, 1, H, W) T in [0, 1]} in train
and eval alike (H, W = 4 x the C2 size = the input size). P is kept as logits (mmocr 1.x, AMP friendly); the
codec decodes from them.

loss = 5 * balanced BCE-with-logits (OHEM 3:1) on P vs gt_shrink under gt_shrink_mask
     + 10 * masked L1 on T vs gt_thr under gt_thr_mask
     + 1 * Dice on B = sigmoid(k (P - T)) vs gt_shrink under gt_shrink_mask (over the whole batch)
computed in fp32 (../shared/reference/detectors.md §1.3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tcm.config import DBHeadConfig
from tcm.losses import balanced_bce_with_logits
from tcm.neck import FPNC

EPS = 1e-6  # DB's eps in MaskL1Loss / DiceLoss
TARGET_KEYS = ("gt_shrink", "gt_shrink_mask", "gt_thr", "gt_thr_mask")


def _branch(channels: int) -> nn.Sequential:
    """conv3x3 C->C/4, BN, ReLU, ConvT 2x2 s2, BN, ReLU, ConvT 2x2 s2 -> 1 channel: stride 4 -> stride 1."""
    mid = channels // 4
    return nn.Sequential(
        nn.Conv2d(channels, mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(mid, mid, 2, stride=2),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(mid, 1, 2, stride=2),
    )


def _init_weights(module: nn.Module) -> None:
    """Kaiming-normal convs, BN weight 1 / bias 1e-4 (DB and mmocr)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.constant_(m.bias, 1e-4)


def _target(targets: dict[str, Tensor], key: str) -> Tensor:
    """A (B, H, W) target map as fp32; (B, 1, H, W) is accepted too."""
    if key not in targets:
        raise KeyError(f"DBHead.loss: target {key!r} missing (have {sorted(targets)}); encode with DBCodec")
    t = targets[key].float()
    return t[:, 0] if t.ndim == 4 else t


class DBHead(nn.Module):
    def __init__(self, cfg: DBHeadConfig, in_channels: Sequence[int]):
        super().__init__()
        self.cfg = cfg
        self.neck = FPNC(in_channels, cfg.neck_channels)
        self.prob = _branch(cfg.neck_channels)
        self.thresh = _branch(cfg.neck_channels)
        _init_weights(self)

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        x = self.neck(feats)  # (B, C, H/4, W/4)
        return {
            "prob_logits": self.prob(x),  # (B, 1, H, W)
            "thresh": torch.sigmoid(self.thresh(x)),  # (B, 1, H, W)
        }

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.cfg
        logits = outputs["prob_logits"]
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()[:, 0]  # (B, H, W)
            thresh = outputs["thresh"].float()[:, 0]  # (B, H, W)
            gt, mask, gt_thr, thr_mask = (_target(targets, k) for k in TARGET_KEYS)  # each (B, H, W)
            if gt.shape != logits.shape:
                raise ValueError(
                    f"DBHead.loss: gt_shrink {tuple(gt.shape)} does not match prob_logits {tuple(logits.shape)}"
                )
            loss_prob = balanced_bce_with_logits(logits, gt, mask, cfg.ohem_ratio)
            loss_thr = ((thresh - gt_thr).abs() * thr_mask).sum() / (thr_mask.sum() + EPS)
            binary = torch.sigmoid(cfg.k * (torch.sigmoid(logits) - thresh))  # approximate binary map B
            inter = (binary * gt * mask).sum()
            union = (binary * mask).sum() + (gt * mask).sum() + EPS
            loss_bin = 1.0 - 2.0 * inter / union
            total = cfg.weight_prob * loss_prob + cfg.weight_thr * loss_thr + cfg.weight_bin * loss_bin
        return {"loss_prob": loss_prob, "loss_thr": loss_thr, "loss_bin": loss_bin, "loss": total}
