"""CLIP image tower with dense features: C2..C5 for the neck plus the attention pool run over every position.

open_clip's `ModifiedResNet` is reused as is (stem, anti-aliased bottlenecks, `attnpool` weights); only the
attention pool's forward is redone here, because open_clip's returns the global token alone while TCM also needs
the attention-pooled dense map (DenseCLIP's `CLIPResNetWithAttention`, reference/tcm.md §1.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet
from torch import Tensor, nn

from tcm.config import ClipConfig


@dataclass(frozen=True)
class FeatureSpec:
    """One declared output of the image encoder: its name, channel count and stride w.r.t. the input."""

    name: str
    channels: int
    stride: int


class ImageFeatures(NamedTuple):
    """What `ImageEncoder.forward` returns. The dense parts are None when the encoder was built without a pool."""

    pyramid: list[Tensor]  # C2..C5: (B, C_i, H / s_i, W / s_i) for the specs in `ImageEncoder.pyramid`
    global_feat: Tensor | None  # (B, E): attention-pool token 0 (CLIP's image embedding)
    feature_map: Tensor | None  # (B, E, H/32, W/32): attention-pool tokens 1..HW


def resize_positional_embedding(pos: Tensor, height: int, width: int) -> Tensor:
    """Resize an attention-pool positional table (1 + S*S, C) to (1 + height*width, C).

    Token 0 (the mean/class token) is kept; the S x S spatial part is bilinearly interpolated (align_corners=False,
    as DenseCLIP/TCM do). Returned unchanged when the grid already matches.
    """
    N, C = pos.shape
    S = math.isqrt(N - 1)
    if S * S != N - 1:
        raise ValueError(f"positional embedding of {N} rows is not 1 + a square grid (tcm/backbone/image.py)")
    if (height, width) == (S, S):
        return pos
    cls_pos, spatial = pos[:1], pos[1:]  # (1, C), (S*S, C)
    grid = spatial.reshape(1, S, S, C).permute(0, 3, 1, 2)  # (1, C, S, S)
    grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)  # (1, C, h, w)
    spatial = grid.permute(0, 2, 3, 1).reshape(height * width, C)  # (h*w, C)
    return torch.cat([cls_pos, spatial], dim=0)  # (1 + h*w, C)


def dense_attention_pool(pool: AttentionPool2d, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run open_clip's attention pool with every token as a query, reusing its q/k/v/c projections.

    x: (B, C, h, w) stride-32 features. Returns global_feat (B, E) = token 0 (equal to `pool(x)` when h, w match
    the pretrained grid) and feature_map (B, E, h, w) = tokens 1..hw.
    """
    B, C, h, w = x.shape
    heads = pool.num_heads
    tokens = x.flatten(2).transpose(1, 2)  # (B, hw, C)
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (B, 1 + hw, C)
    tokens = tokens + resize_positional_embedding(pool.positional_embedding, h, w).to(tokens.dtype)
    T = tokens.shape[1]

    def split_heads(t: Tensor) -> Tensor:
        return t.reshape(B, T, heads, C // heads).transpose(1, 2)  # (B, heads, T, C/heads)

    q, k, v = (split_heads(proj(tokens)) for proj in (pool.q_proj, pool.k_proj, pool.v_proj))
    out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, C/heads); scale 1/sqrt(C/heads) as in MHA
    out = out.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
    out = pool.c_proj(out)  # (B, T, E)
    E = out.shape[-1]
    global_feat = out[:, 0]  # (B, E)
    feature_map = out[:, 1:].transpose(1, 2).reshape(B, E, h, w)  # (B, E, h, w)
    return global_feat, feature_map


class ImageEncoder(nn.Module):
    """open_clip ModifiedResNet (RN50 by default) returning C2..C5 and, when `dense`, the attention-pooled
    global vector and dense map.

    `dense=False` (the baseline switch) drops the attention pool altogether: no parameters that would go unused
    under DDP and no cost. The ResNet lives at `self.resnet` with open_clip's parameter names, so a CLIP
    `visual.*` state dict loads into it by stripping the prefix (tcm/weights.py).
    """

    def __init__(self, cfg: ClipConfig, dense: bool = True):
        super().__init__()
        self.resnet = ModifiedResNet(
            layers=list(cfg.vision_layers),
            output_dim=cfg.embed_dim,
            heads=cfg.vision_heads,
            image_size=cfg.pretrain_image_size,
            width=cfg.vision_width,
        )
        if not dense:
            self.resnet.attnpool = None  # baseline: plain CLIP ResNet features only
        w = cfg.vision_width
        # bottleneck expansion 4: stage i has width * 2^i planes -> 4 * width * 2^i channels
        self.pyramid = tuple(
            FeatureSpec(f"c{i + 2}", 4 * w * 2**i, 4 * 2**i) for i in range(4)
        )  # c2..c5 at strides 4, 8, 16, 32
        self.dense = FeatureSpec("feature_map", cfg.embed_dim, 32) if dense else None

    @property
    def channels(self) -> list[int]:
        return [spec.channels for spec in self.pyramid]

    @property
    def strides(self) -> list[int]:
        return [spec.stride for spec in self.pyramid]

    def forward(self, images: Tensor) -> ImageFeatures:
        B, _, H, W = images.shape
        if H % 32 or W % 32:
            raise ValueError(f"image encoder input {H}x{W} is not a multiple of 32 (pad it; tcm/backbone/image.py)")
        r = self.resnet
        x = r.stem(images)  # (B, width, H/4, W/4)
        c2 = r.layer1(x)
        c3 = r.layer2(c2)
        c4 = r.layer3(c3)
        c5 = r.layer4(c4)  # (B, 32 * width, H/32, W/32)
        if r.attnpool is None:
            return ImageFeatures([c2, c3, c4, c5], None, None)
        global_feat, feature_map = dense_attention_pool(r.attnpool, c5)
        return ImageFeatures([c2, c3, c4, c5], global_feat, feature_map)
