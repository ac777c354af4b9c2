"""The one place that turns a `RecognizerConfig` into a `CLIP4STR` (and its CLIP weights into the towers)."""

from __future__ import annotations

from tcm.recognition.config import RecognizerConfig
from tcm.recognition.decoder import PARSeqDecoder
from tcm.recognition.encoder import ImageEncoder, TextEncoder
from tcm.recognition.model import CLIP4STR
from tcm.recognition.tokenizer import Tokenizer
from tcm.weights import init_clip_vit_weights


def build_decoder(cfg: RecognizerConfig) -> PARSeqDecoder:
    tokenizer = Tokenizer(cfg.charset)
    return PARSeqDecoder(
        width=cfg.embed_dim,
        depth=cfg.decoder_depth,
        heads=cfg.decoder_heads,
        mlp_ratio=cfg.decoder_mlp_ratio,
        dropout=cfg.decoder_dropout,
        num_tokens=len(tokenizer),  # [E] + charset + [B] + [P] embeddings (97)
        num_classes=tokenizer.num_classes,  # [B] and [P] are never predicted (95)
        num_positions=cfg.num_positions,  # 26
    )


def build_recognizer(cfg: RecognizerConfig, pretrained: bool = True) -> CLIP4STR:
    """CLIP4STR for `cfg`. `pretrained`: load `cfg.weights` into the CLIP towers (or warn that there are none);
    pass False when a full checkpoint will be loaded over it anyway. The text-tower freezing of
    `cfg.text_freeze_layers` is applied at construction."""
    image_encoder = ImageEncoder(cfg)
    text_encoder = TextEncoder(cfg) if cfg.cross_modal else None
    if pretrained:
        init_clip_vit_weights(image_encoder.visual, text_encoder.clip if text_encoder else None, cfg.weights)
    return CLIP4STR(
        cfg,
        image_encoder,
        build_decoder(cfg),
        text_encoder=text_encoder,
        cross_decoder=build_decoder(cfg) if cfg.cross_modal else None,
    )
