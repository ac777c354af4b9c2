"""CLIP towers: the image encoder with dense features and the text encoder with learnable contexts."""

from tcm.backbone.image import (
    FeatureSpec,
    ImageEncoder,
    ImageFeatures,
    dense_attention_pool,
    resize_positional_embedding,
)
from tcm.backbone.text import TextEncoder, tokenize_prompt

__all__ = [
    "FeatureSpec",
    "ImageEncoder",
    "ImageFeatures",
    "TextEncoder",
    "dense_attention_pool",
    "resize_positional_embedding",
    "tokenize_prompt",
]
