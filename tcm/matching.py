"""Instance-language matching: the cosine score map between the prompted pixels and the text embedding, and its
auxiliary balanced-BCE loss (reference/tcm.md §1.6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tcm.losses import balanced_bce_with_logits


def score_map(pixels: Tensor, text: Tensor) -> Tensor:
    """P = cosine(I_hat, t) per pixel. pixels (B, E, h, w), text (B, K, E) -> (B, K, h, w) in [-1, 1]."""
    pixels = F.normalize(pixels, dim=1)  # unit vectors over E at every pixel
    text = F.normalize(text, dim=2)  # unit vectors over E per text embedding
    return torch.einsum("behw,bke->bkhw", pixels, text)


def matching_loss(
    score: Tensor, aux_text: Tensor, aux_mask: Tensor, tau: float, ohem_ratio: float = 3.0
) -> Tensor:
    """Balanced BCE (OHEM) of the logits P / tau, bilinearly upsampled to the target size, against the head's shrunk
    text map. score (B, 1, h, w); aux_text, aux_mask (B, H, W) in {0, 1}. Zero (graph-attached) without positives.
    """
    B, K, h, w = score.shape
    if K != 1:
        raise ValueError(f"matching_loss expects one text embedding per image, score map has K={K} (tcm/matching.py)")
    H, W = aux_text.shape[-2:]
    logits = F.interpolate(score / tau, size=(H, W), mode="bilinear", align_corners=False)  # (B, 1, H, W)
    return balanced_bce_with_logits(logits[:, 0], aux_text.to(logits.dtype), aux_mask.to(logits.dtype), ohem_ratio)
