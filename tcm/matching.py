"""Instance-language matching: the cosine score map between the prompted pixels and the text embedding, and its
auxiliary loss (reference/tcm.md §1.6), per head as the released identity heads (ocrclip/ocrclip/heads.py)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tcm.losses import balanced_bce_with_logits, ohem_text_mask, square_dice

# balanced_bce: released IdentityHead (DB) and FCEIdentityHead (bbce_loss=True): balanced BCE with OHEM 3:1 on the
# logits. ohem_dice: released PANIdentityHead (bbce_loss=False): per-image OHEM 3:1 selection, then square Dice of
# sigmoid(logits), mean over the batch.
AuxLoss = Literal["balanced_bce", "ohem_dice"]


def score_map(pixels: Tensor, text: Tensor) -> Tensor:
    """P = cosine(I_hat, t) per pixel. pixels (B, E, h, w), text (B, K, E) -> (B, K, h, w) in [-1, 1]."""
    pixels = F.normalize(pixels, dim=1)  # unit vectors over E at every pixel
    text = F.normalize(text, dim=2)  # unit vectors over E per text embedding
    return torch.einsum("behw,bke->bkhw", pixels, text)


def matching_loss(
    score: Tensor,
    aux_text: Tensor,
    aux_mask: Tensor,
    tau: float,
    kind: AuxLoss = "balanced_bce",
    ohem_ratio: float = 3.0,  # negatives : positives (released identity heads, negative_ratio=3.0)
) -> Tensor:
    """The auxiliary loss of the logits P / tau against the codec's `aux_text` under `aux_mask`.

    score (B, 1, h, w); aux_text, aux_mask (B, H, W) in {0, 1}. The logits are bilinearly upsampled to the
    target size when it differs (DB, PAN: targets at input size); FCE's target is the score map's own 1/32 grid
    (released FCENetCLIPTargets), used as is. Each pixel's loss is weighted by its own image's masks only (the
    released balanced BCE broadcasts (N, H, W) masks against (N, 1, H, W) losses; not replicated,
    docs/fidelity.md).
    Zero (graph-attached) without positives for `balanced_bce`."""
    B, K, h, w = score.shape
    if K != 1:
        raise ValueError(f"matching_loss expects one text embedding per image, score map has K={K} (tcm/matching.py)")
    H, W = aux_text.shape[-2:]
    logits = score.float() / tau  # (B, 1, h, w)
    if (H, W) != (h, w):
        logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)  # (B, 1, H, W)
    logits = logits[:, 0]  # (B, H, W)
    match kind:
        case "balanced_bce":
            return balanced_bce_with_logits(logits, aux_text.to(logits.dtype), aux_mask.to(logits.dtype), ohem_ratio)
        case "ohem_dice":
            with torch.autocast(device_type=logits.device.type, enabled=False):
                text, mask = aux_text > 0.5, aux_mask > 0.5  # (B, H, W) bool each
                selected = ohem_text_mask(logits.detach(), text, mask, int(ohem_ratio))
                return square_dice(torch.sigmoid(logits), text.float(), selected.float())
        case _:
            raise ValueError(f"unknown auxiliary loss {kind!r} (tcm/matching.py: balanced_bce or ohem_dice)")
