"""FCENet head (torch): FPN over C3..C5, a shared per-level classifier / Fourier regressor, and its loss.

Facts: ../shared/reference/detectors.md §3.1 (network) and §3.3 (losses, mmocr 0.x / paper formulation).
Targets are FCECodec's maps stacked over the batch: `level_s{s}` (B, 4k+5, H/s, W/s) =
[TR, TCL, mask, real c_-k..c_k, imag c_-k..c_k].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcm.config import FCEHeadConfig
from tcm.heads.fce_codec import fourier_basis
from tcm.neck import FPN

OHEM_RATIO = 3.0  # negatives : positives in the TR cross-entropy (FCENet / mmocr)
OHEM_EMPTY_NEGATIVES = 100  # negatives kept when an image batch has no text (mmocr)
TCL_NEGATIVE_WEIGHT = 0.5  # weight of the TCL cross-entropy outside the text region (mmocr 0.x)


class FCEHead(nn.Module):
    """in_channels = C2..C5 (C5 may carry +1 for the TCM score map); C2 is unused (FCENet starts at 1/8)."""

    def __init__(self, cfg: FCEHeadConfig, in_channels: Sequence[int]):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(
                f"tcm/heads/fce.py: FCEHead wants C2..C5 channels, got in_channels={list(in_channels)}"
            )
        self.cfg = cfg
        k = cfg.fourier_degree
        self.neck = FPN(list(in_channels), cfg.neck_channels, start_level=1)  # P3..P5 at strides 8/16/32
        self.cls = nn.Conv2d(cfg.neck_channels, 4, 3, padding=1)  # [TR bg, TR fg, TCL bg, TCL fg]
        self.reg = nn.Conv2d(cfg.neck_channels, 2 * (2 * k + 1), 3, padding=1)  # [real c_-k..c_k, imag ...]
        for conv in (self.cls, self.reg):
            nn.init.normal_(conv.weight, 0.0, 0.01)  # FCENet head init
            nn.init.zeros_(conv.bias)
        cos, sin = fourier_basis(k, cfg.num_sample)  # (2k+1, num_sample) each
        self.register_buffer("fourier_cos", torch.as_tensor(cos, dtype=torch.float32), persistent=False)
        self.register_buffer("fourier_sin", torch.as_tensor(sin, dtype=torch.float32), persistent=False)

    def forward(self, feats: list[Tensor]) -> dict[str, Tensor]:
        levels = self.neck(feats)  # P3..P5: (B, neck_channels, H/s, W/s)
        out: dict[str, Tensor] = {}
        for s, x in zip(self.cfg.strides, levels, strict=True):
            out[f"cls_s{s}"] = self.cls(x)  # (B, 4, H/s, W/s)
            out[f"reg_s{s}"] = self.reg(x)  # (B, 2(2k+1), H/s, W/s)
        return out

    # ------------------------------------------------------------------------------------------- loss

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """Sum over levels of loss_text (OHEM CE on TR), loss_center (CE on TCL), loss_reg_x/y (Smooth-L1)."""
        levels = [
            self._level_loss(outputs[f"cls_s{s}"], outputs[f"reg_s{s}"], targets[f"level_s{s}"])
            for s in self.cfg.strides
        ]
        out = {name: torch.stack([lv[name] for lv in levels]).sum() for name in levels[0]}
        out["loss"] = out["loss_text"] + out["loss_center"] + out["loss_reg_x"] + out["loss_reg_y"]
        return out

    def _level_loss(self, cls: Tensor, reg: Tensor, target: Tensor) -> dict[str, Tensor]:
        B, _, H, W = cls.shape
        J = 2 * self.cfg.fourier_degree + 1
        if target.shape != (B, 2 * J + 3, H, W):
            raise ValueError(
                f"tcm/heads/fce.py: target map {tuple(target.shape)} does not match head output "
                f"{(B, 2 * J + 3, H, W)}; was it encoded with the same strides and fourier_degree?"
            )
        cls = cls.permute(0, 2, 3, 1).reshape(-1, 4).float()  # (B*H*W, 4)
        reg = reg.permute(0, 2, 3, 1).reshape(-1, 2 * J).float()  # (B*H*W, 2J)
        target = target.permute(0, 2, 3, 1).reshape(-1, 2 * J + 3).float()  # (B*H*W, 2J+3)
        tr, tcl, mask = target[:, 0], target[:, 1], target[:, 2]  # (B*H*W,) each
        tr_train = tr * mask  # (B*H*W,) text pixels that are supervised

        loss_text = self._ohem_ce(cls[:, 0:2], tr, mask)

        # TCL: mean CE inside the supervised text region + 0.5 x mean CE elsewhere; only when there is text.
        has_text = (tr_train.sum() > 0).float()
        ce_tcl = F.cross_entropy(cls[:, 2:4], tcl.long(), reduction="none")  # (B*H*W,)
        pos = (ce_tcl * tr_train).sum() / tr_train.sum().clamp(min=1.0)
        neg_w = 1.0 - tr_train
        neg = (ce_tcl * neg_w).sum() / neg_w.sum().clamp(min=1.0)
        loss_center = has_text * (pos + TCL_NEGATIVE_WEIGHT * neg)

        # Regression: contour points from predicted vs GT coefficients, Smooth-L1 on supervised text pixels,
        # weighted 1.0 in the centre region and 0.5 elsewhere; mean over pixels x points.
        px, py = self._fourier_to_points(reg[:, :J], reg[:, J:])  # (B*H*W, num_sample) each
        gx, gy = self._fourier_to_points(target[:, 3 : 3 + J], target[:, 3 + J :])
        weight = ((tr + tcl) / 2.0 * tr_train)[:, None]  # (B*H*W, 1), zero outside tr_train
        denom = tr_train.sum().clamp(min=1.0) * self.cfg.num_sample
        loss_reg_x = (weight * F.smooth_l1_loss(px, gx, reduction="none", beta=1.0)).sum() / denom
        loss_reg_y = (weight * F.smooth_l1_loss(py, gy, reduction="none", beta=1.0)).sum() / denom
        return {
            "loss_text": loss_text,
            "loss_center": loss_center,
            "loss_reg_x": loss_reg_x,
            "loss_reg_y": loss_reg_y,
        }

    def _fourier_to_points(self, real: Tensor, imag: Tensor) -> tuple[Tensor, Tensor]:
        """(M, 2k+1) coefficients c_-k..c_k -> x, y (M, num_sample) by the inverse transform (a matmul)."""
        cos, sin = self.fourier_cos, self.fourier_sin  # (2k+1, num_sample)
        return real @ cos - imag @ sin, real @ sin + imag @ cos

    @staticmethod
    def _ohem_ce(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """2-class CE on `mask`: every positive + the hardest min(#neg, 3 #pos) negatives (100 if no text)."""
        ce = F.cross_entropy(logits, target.long(), reduction="none")  # (M,)
        pos = target * mask
        neg = (1.0 - target) * mask
        n_pos, n_neg_avail = (int(n) for n in torch.stack([pos.sum(), neg.sum()]).tolist())  # one host sync
        n_neg = (
            min(n_neg_avail, int(OHEM_RATIO * n_pos)) if n_pos > 0 else min(n_neg_avail, OHEM_EMPTY_NEGATIVES)
        )
        neg_ce = torch.where(neg > 0, ce, torch.full_like(ce, -1.0))  # (M,) non-negatives sink below any CE
        hard = torch.topk(neg_ce, n_neg).values if n_neg > 0 else ce.new_zeros(0)
        return ((ce * pos).sum() + hard.sum()) / max(n_pos + n_neg, 1)
