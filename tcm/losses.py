"""Losses shared by the heads and the instance-language matching loss (torch).

Computed in fp32 whatever the autocast state (the callers' maps may be fp16/bf16 under AMP); the scalar stays
connected to the graph even when nothing is selected, so an image with no text gives a finite zero that
`backward()` accepts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6  # DB's `eps` in BalanceCrossEntropyLoss / DiceLoss


def balanced_bce_with_logits(
    logits: Tensor,
    target: Tensor,
    mask: Tensor,
    negative_ratio: float = 3.0,  # OHEM 3:1 negatives : positives (DB, mmocr, TCM identity head)
) -> Tensor:
    """Balanced BCE with online hard negative mining, over the whole batch (DB `BalanceCrossEntropyLoss`).

    All positives (target > 0.5 under mask) are kept, plus the `negative_ratio * n_pos` negatives with the
    largest BCE; the sum is divided by `n_pos + n_neg`. With no positive, no negative is kept either and the
    loss is 0 (mmocr `fallback_negative_num=0`). `logits`, `target` and `mask` share one shape (any).
    """
    if logits.shape != target.shape or logits.shape != mask.shape:
        raise ValueError(
            f"balanced_bce_with_logits: shapes differ: logits {tuple(logits.shape)}, "
            f"target {tuple(target.shape)}, mask {tuple(mask.shape)}"
        )
    logits, target, mask = logits.float(), target.float(), mask.float()
    with torch.autocast(device_type=logits.device.type, enabled=False):
        positive = (target > 0.5) & (mask > 0.5)
        negative = (target <= 0.5) & (mask > 0.5)
        n_pos = int(positive.sum())
        n_neg = min(int(negative.sum()), int(n_pos * negative_ratio))
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        pos_sum = (loss * positive).sum()
        if n_neg > 0:
            neg_losses = loss.masked_select(negative)  # (#negatives,)
            neg_sum = torch.topk(neg_losses, n_neg, sorted=False).values.sum()
        else:
            neg_sum = loss.sum() * 0.0  # keeps the graph for backward()
        return (pos_sum + neg_sum) / (n_pos + n_neg + EPS)

