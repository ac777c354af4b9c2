"""Losses shared by the heads and the instance-language matching loss (torch): balanced BCE (DB), square Dice
with OHEM (PAN).

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



DICE_EPS = 1e-3  # `smooth` added to each Dice sum (mmocr 0.x PANLoss / released PANIdentityHead; official PAN)
OHEM_NEG_RATIO = 3  # OHEM negatives : positives for PAN's text map and the released PAN identity head


def square_dice(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """1 - 2 (sum(p g) + e) / (sum(p^2) + e + sum(g^2) + e) over the mask, per image, mean over the batch.
    (B, H, W) each. `e` on the numerator too, as the released (mmocr 0.x) `dice_loss_with_logits`: an image
    without text then scores 1 - 2e / (sum(p^2) + 2e), which still pushes p to 0 (mmocr 1.x drops it there)."""
    B = pred.shape[0]
    p = (pred * mask).reshape(B, -1)  # (B, H*W)
    g = (target * mask).reshape(B, -1)  # (B, H*W)
    a = (p * g).sum(dim=1) + DICE_EPS
    b = (p * p).sum(dim=1) + DICE_EPS
    c = (g * g).sum(dim=1) + DICE_EPS
    return (1.0 - 2.0 * a / (b + c)).mean()


def ohem_text_mask(scores: Tensor, gt_text: Tensor, mask: Tensor, negative_ratio: int = OHEM_NEG_RATIO) -> Tensor:
    """Per image: all text pixels under the mask plus the `negative_ratio` x #pos highest-scoring negatives (PAN
    OHEM). scores, gt_text, mask: (B, H, W) (gt_text, mask boolean). Without positives or negatives the plain mask.
    """
    selected = []
    for s, g, m in zip(scores, gt_text, mask, strict=True):  # each (H, W)
        n_pos = int((g & m).sum())
        negatives = s[~g]  # (#neg,)
        n_neg = min(negative_ratio * n_pos, negatives.numel())
        if n_pos == 0 or n_neg == 0:
            selected.append(m)
            continue
        threshold = torch.topk(negatives, n_neg).values[-1]  # the n_neg-th highest negative score
        selected.append(((s >= threshold) | g) & m)
    return torch.stack(selected)  # (B, H, W) bool
