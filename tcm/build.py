"""The one place that turns a `DetectorConfig` into objects (a `match` on the head kind; no string registries)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from tcm.backbone.image import ImageEncoder
from tcm.backbone.text import TextEncoder
from tcm.config import DBHeadConfig, DetectorConfig, FCEHeadConfig, HeadConfig, PANHeadConfig
from tcm.detector import Detector
from tcm.heads.codecs import build_codec
from tcm.matching import AuxLoss
from tcm.prompts import LanguagePromptGenerator, TextContextDecoder, VisualPromptGenerator
from tcm.weights import init_clip_weights

__all__ = ["aux_loss_kind", "build_codec", "build_detector", "build_head"]


def build_head(head_cfg: HeadConfig, in_channels: Sequence[int]) -> nn.Module:
    """The head (with its neck) for C2..C5 of `in_channels` (C5 + 1 when TCM is on)."""
    match head_cfg:
        case DBHeadConfig():
            from tcm.heads.db import DBHead

            return DBHead(head_cfg, in_channels)
        case PANHeadConfig():
            from tcm.heads.pan import PANHead

            return PANHead(head_cfg, in_channels)
        case FCEHeadConfig():
            from tcm.heads.fce import FCEHead

            return FCEHead(head_cfg, in_channels)
        case _:
            raise TypeError(f"unknown head config {type(head_cfg).__name__} (tcm/build.py build_head)")


def aux_loss_kind(head_cfg: HeadConfig) -> AuxLoss:
    """The instance-language matching loss of the released identity head that goes with the head."""
    match head_cfg:
        case PANHeadConfig():
            return "ohem_dice"  # PANIdentityHead (bbce_loss=False): OHEM + Dice on the logits
        case DBHeadConfig() | FCEHeadConfig():
            return "balanced_bce"  # IdentityHead / FCEIdentityHead (bbce_loss=True)
        case _:
            raise TypeError(f"unknown head config {type(head_cfg).__name__} (tcm/build.py aux_loss_kind)")


def build_detector(cfg: DetectorConfig, pretrained: bool = True) -> Detector:
    """The detector for `cfg`. `pretrained`: load `cfg.clip.weights` (or warn that there are none); pass False
    when a full checkpoint will be loaded over it anyway."""
    t = cfg.tcm
    image_encoder = ImageEncoder(cfg.clip, dense=t.enabled)
    in_channels = image_encoder.channels
    text_encoder = None
    parts: dict[str, nn.Module | None] = {}
    if t.enabled:
        in_channels[-1] += 1  # the score map is concatenated to C5
        E = cfg.clip.embed_dim
        text_encoder = TextEncoder(cfg.clip, t.num_prompts, t.class_prompt, t.prompt_length, t.context_init_std)
        dec = (t.decoder_width, t.decoder_heads, t.decoder_layers, t.decoder_dropout, t.gamma_init)
        parts = dict(
            prompt_generator=LanguagePromptGenerator(E, cfg.clip.text_width) if t.language_prompt_generator else None,
            visual_prompt_generator=VisualPromptGenerator(E, *dec) if t.visual_prompt_generator else None,
            context_decoder=TextContextDecoder(E, *dec) if t.context_decoder else None,
        )
    head = build_head(cfg.head, in_channels)
    if pretrained:
        init_clip_weights(image_encoder, text_encoder, cfg.clip.weights)
    return Detector(
        image_encoder,
        head,
        text_encoder=text_encoder,
        tau=t.tau,
        aux_loss_weight=t.aux_loss_weight,
        aux_loss=aux_loss_kind(cfg.head),
        **parts,
    )


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm*d of `model` -> SyncBatchNorm, whose statistics span the whole global batch under DDP
    (the released train_ocrclip.py converts the model when distributed). The new layers hold the same Parameter
    objects and buffers under the same state-dict keys, so checkpoints load either way; without an initialised
    process group (or in eval mode) SyncBatchNorm computes plain batch norm. Returns the converted model."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
