"""PAN head: FPEM x N + FFM neck, conv3x3 + BN + ReLU + conv1x1 -> 2 + emb_dim channels at stride 4, and the loss.

forward(feats C2..C5) -> {"text_logits": (B, 1, H/4, W/4), "kernel_logits": (B, 1, H/4, W/4),
"embedding": (B, emb_dim, H/4, W/4)} in train and eval alike.

loss (../shared/reference/detectors.md §2.3; predictions bilinearly upsampled x4 to the target size, mmocr 1.x):
  weight_text * Dice(sigmoid(text), gt_text > 0, OHEM 3:1 selection per image)
+ weight_kernel * Dice(sigmoid(kernel), gt_kernel > 0, mask = gt_text > 0 and gt_mask)
+ weight_emb * (aggregation + discrimination + 0.001 * regulariser) of the similarity vectors,
Dice = PAN's squared Dice per image (tcm.losses.square_dice), averaged over the batch; everything in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcm.config import PANHeadConfig
from tcm.losses import ohem_text_mask, square_dice
from tcm.neck import FPEMFFM

REG_WEIGHT = 1e-3  # weight of ln(1 + |G_k|) (mmocr 1.x EmbLossV1 / pan_pp)


def embedding_loss_single(
    emb: Tensor, instances: Tensor, kernel: Tensor, mask: Tensor, delta_agg: float, delta_dis: float
) -> Tensor:
    """PAN's aggregation + discrimination loss for one image, vectorised over pixels with index ops.

    emb (C, H, W); instances (H, W) int64 labels (0 = background); kernel, mask (H, W) bool.
    Instances are the labels present in the kernels under the mask; G_i = mean embedding of kernel i.
    """
    C = emb.shape[0]
    labels = instances * mask  # (H, W) ignored pixels -> 0
    kernel_labels = (labels * kernel).reshape(-1)  # (H*W,)
    present = torch.unique(kernel_labels)
    present = present[present > 0]  # (N,)
    N = present.numel()
    if N == 0:
        return emb.sum() * 0.0  # no instance: zero, still attached to the graph
    lut = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long, device=emb.device)
    lut[present] = torch.arange(N, device=emb.device)  # label -> instance index 0..N-1
    pixels = emb.reshape(C, -1).t()  # (H*W, C)
    k_idx = lut[kernel_labels]  # (H*W,) instance index or -1
    in_kernel = k_idx >= 0
    k_count = torch.bincount(k_idx[in_kernel], minlength=N).clamp_min(1)  # (N,)
    means = torch.zeros(N, C, dtype=emb.dtype, device=emb.device)
    means = means.index_add(0, k_idx[in_kernel], pixels[in_kernel]) / k_count[:, None]  # (N, C) G_i
    t_idx = lut[labels.reshape(-1)]  # (H*W,) text pixels of present instances
    in_text = t_idx >= 0
    diff = pixels[in_text] - means[t_idx[in_text]]  # (T, C)
    dist = diff.pow(2).sum(dim=1).clamp_min(1e-12).sqrt()  # (T,) clamp: no NaN gradient at 0
    agg = torch.log1p(F.relu(dist - delta_agg) ** 2)  # (T,)
    t_count = torch.bincount(t_idx[in_text], minlength=N).clamp_min(1)  # (N,)
    per_instance = torch.zeros(N, dtype=emb.dtype, device=emb.device).index_add(0, t_idx[in_text], agg)
    loss = (per_instance / t_count).mean()
    if N >= 2:
        pair = means[:, None, :] - means[None, :, :]  # (N, N, C)
        off_diagonal = ~torch.eye(N, dtype=torch.bool, device=emb.device)  # ordered pairs i != j
        gap = pair[off_diagonal].pow(2).sum(dim=1).clamp_min(1e-12).sqrt()  # (N*(N-1),)
        loss = loss + torch.log1p(F.relu(2.0 * delta_dis - gap) ** 2).mean()
    norms = means.pow(2).sum(dim=1).clamp_min(1e-12).sqrt()  # (N,)
    return loss + REG_WEIGHT * torch.log1p(norms).mean()


def _target(targets: dict[str, Tensor], key: str) -> Tensor:
    if key not in targets:
        raise KeyError(f"PANHead.loss: target {key!r} missing (have {sorted(targets)}); encode with PANCodec")
    t = targets[key].float()
    return t[:, 0] if t.ndim == 4 else t  # (B, H, W)


class PANHead(nn.Module):
    def __init__(self, cfg: PANHeadConfig, in_channels: Sequence[int]):
        super().__init__()
        self.cfg = cfg
        self.neck = FPEMFFM(in_channels, cfg.neck_channels, cfg.num_fpem)
        C = cfg.neck_channels
        self.head = nn.Sequential(
            nn.Conv2d(self.neck.out_channels, C, 3, padding=1, bias=False),
            nn.BatchNorm2d(C),
            nn.ReLU(inplace=True),
            nn.Conv2d(C, 2 + cfg.emb_dim, 1),
        )

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        y = self.head(self.neck(feats))  # (B, 2 + emb_dim, H/4, W/4)
        return {"text_logits": y[:, 0:1], "kernel_logits": y[:, 1:2], "embedding": y[:, 2:]}

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.cfg
        gt_text, gt_kernel, gt_mask = (_target(targets, k) for k in ("gt_text", "gt_kernel", "gt_mask"))
        H, W = gt_text.shape[-2:]
        maps = torch.cat([outputs["text_logits"], outputs["kernel_logits"], outputs["embedding"]], dim=1)
        with torch.autocast(device_type=maps.device.type, enabled=False):
            up = F.interpolate(maps.float(), size=(H, W), mode="bilinear", align_corners=False)  # (B, 2+E, H, W)
            text_logits, kernel_logits, emb = up[:, 0], up[:, 1], up[:, 2:]
            text, kernel, mask = gt_text > 0.5, gt_kernel > 0.5, gt_mask > 0.5  # (B, H, W) bool each
            selected = ohem_text_mask(text_logits.detach(), text, mask)
            loss_text = square_dice(torch.sigmoid(text_logits), text.float(), selected.float())
            loss_kernel = square_dice(torch.sigmoid(kernel_logits), kernel.float(), (text & mask).float())
            labels = gt_text.round().long()  # (B, H, W) instance index
            loss_emb = torch.stack([
                embedding_loss_single(e, lab, k, m, cfg.delta_agg, cfg.delta_dis)
                for e, lab, k, m in zip(emb, labels, kernel, mask, strict=True)
            ]).mean()
            total = cfg.weight_text * loss_text + cfg.weight_kernel * loss_kernel + cfg.weight_emb * loss_emb
        return {"loss_text": loss_text, "loss_kernel": loss_kernel, "loss_emb": loss_emb, "loss": total}
