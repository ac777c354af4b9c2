"""Necks: FPN-C (DBNet), FPEM x N + FFM (PAN) and the mmdet-style FPN (FCENet).

Inputs are the backbone pyramid C2..C5 at strides 4/8/16/32 (C5 may carry +1 channel: the TCM score map), as
a list of (B, C_i, H_i, W_i) tensors. Upsampling always targets the exact size of the finer map, so inputs
whose side is not a multiple of 32 still line up.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_inputs(feats: Sequence[Tensor], in_channels: Sequence[int], where: str) -> None:
    if len(feats) != len(in_channels):
        raise ValueError(f"{where}: expected {len(in_channels)} feature maps, got {len(feats)}")
    for i, (f, c) in enumerate(zip(feats, in_channels, strict=True)):
        if f.shape[1] != c:
            raise ValueError(f"{where}: feature {i} has {f.shape[1]} channels, the neck was built for {c}")


class FPNC(nn.Module):
    """DBNet's FPN-C: 1x1 laterals (no bias), top-down nearest x2 + add, 3x3 convs to C/4, upsample to stride 4,
    concat (p2, p3, p4, p5 order, mmocr) -> (B, out_channels, H/4, W/4)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256):  # 256: DB / mmocr FPNC width
        super().__init__()
        if out_channels % len(in_channels):
            raise ValueError(f"FPNC: out_channels {out_channels} not divisible by {len(in_channels)} levels")
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        level = out_channels // len(in_channels)
        self.laterals = nn.ModuleList(nn.Conv2d(c, out_channels, 1, bias=False) for c in in_channels)
        self.smooth = nn.ModuleList(
            nn.Conv2d(out_channels, level, 3, padding=1, bias=False) for _ in in_channels
        )

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        _check_inputs(feats, self.in_channels, "FPNC")
        lat = [conv(f) for conv, f in zip(self.laterals, feats, strict=True)]  # each (B, C, H_i, W_i)
        for i in range(len(lat) - 1, 0, -1):  # top-down: coarse into fine
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
        size = lat[0].shape[-2:]  # stride 4
        outs = [F.interpolate(conv(p), size=size, mode="nearest") if i else conv(p)
                for i, (conv, p) in enumerate(zip(self.smooth, lat, strict=True))]  # each (B, C/4, H/4, W/4)
        return torch.cat(outs, dim=1)  # (B, C, H/4, W/4)


class SeparableConv(nn.Module):
    """PAN's SC block: depthwise 3x3 (stride s) + pointwise 1x1 + BN + ReLU."""

    def __init__(self, channels: int, stride: int = 1):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.pointwise(self.depthwise(x))))


def _up_add(x: Tensor, y: Tensor) -> Tensor:
    """Bilinearly resize x to y's size, then add."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False) + y


class FPEM(nn.Module):
    """Feature Pyramid Enhancement Module: up-scale then down-scale path over 4 levels of equal width."""

    def __init__(self, channels: int):
        super().__init__()
        self.up = nn.ModuleList(SeparableConv(channels, 1) for _ in range(3))  # c4, c3, c2
        self.down = nn.ModuleList(SeparableConv(channels, 2) for _ in range(3))  # c3, c4, c5

    def forward(self, c2: Tensor, c3: Tensor, c4: Tensor, c5: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        c4 = self.up[0](_up_add(c5, c4))
        c3 = self.up[1](_up_add(c4, c3))
        c2 = self.up[2](_up_add(c3, c2))
        c3 = self.down[0](_up_add(c3, c2))  # stride-2 SC brings (c3 at c2 size) back to c3 size
        c4 = self.down[1](_up_add(c4, c3))
        c5 = self.down[2](_up_add(c5, c4))
        return c2, c3, c4, c5


class FPEMFFM(nn.Module):
    """PAN neck: 1x1 conv+BN+ReLU reduce C2..C5 to `channels`, `num_fpem` cascaded FPEMs, FFM = element-wise sum of
    the FPEM outputs per level, bilinear upsample to stride 4, concat -> (B, 4 * channels, H/4, W/4)."""

    def __init__(self, in_channels: Sequence[int], channels: int = 128, num_fpem: int = 2):  # PAN paper
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"FPEMFFM: needs the 4 levels C2..C5, got in_channels {list(in_channels)}")
        if num_fpem < 1:
            raise ValueError(f"FPEMFFM: num_fpem must be >= 1, got {num_fpem}")
        self.in_channels = tuple(in_channels)
        self.out_channels = 4 * channels
        self.reduce = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
            for c in in_channels
        )
        self.fpems = nn.ModuleList(FPEM(channels) for _ in range(num_fpem))

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        _check_inputs(feats, self.in_channels, "FPEMFFM")
        levels = tuple(conv(f) for conv, f in zip(self.reduce, feats, strict=True))  # 4 x (B, ch, H_i, W_i)
        total: list[Tensor] | None = None
        for fpem in self.fpems:
            levels = fpem(*levels)
            total = list(levels) if total is None else [t + x for t, x in zip(total, levels, strict=True)]
        assert total is not None  # num_fpem >= 1
        size = total[0].shape[-2:]  # stride 4
        ups = [total[0]] + [F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in total[1:]]
        return torch.cat(ups, dim=1)  # (B, 4 * ch, H/4, W/4)


class FPN(nn.Module):
    """mmdet-style FPN: 1x1 laterals, top-down nearest upsample + add, 3x3 output convs (all with bias).

    `in_channels` lists every input level (mmdet semantics); levels from `start_level` on are used, one output
    each. FCENet: `FPN([C2, C3, C4, C5], 256, start_level=1)` -> P3, P4, P5 at strides 8/16/32.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, start_level: int = 0):  # mmdet FPN
        super().__init__()
        if not 0 <= start_level < len(in_channels):
            raise ValueError(f"FPN: start_level {start_level} outside the {len(in_channels)} input levels")
        self.in_channels = tuple(in_channels)
        self.start_level = start_level
        self.out_channels = out_channels
        used = self.in_channels[start_level:]
        self.laterals = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in used)
        self.outputs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in used)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        _check_inputs(feats, self.in_channels, "FPN")
        used = feats[self.start_level :]
        lat = [conv(f) for conv, f in zip(self.laterals, used, strict=True)]  # each (B, C, H_i, W_i)
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
        return [conv(p) for conv, p in zip(self.outputs, lat, strict=True)]  # each (B, C, H_i, W_i)
