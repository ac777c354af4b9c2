"""Word crops -> the recogniser's input tensor: resize to the model's size (bicubic, no aspect-ratio padding, as
CLIP4STR's `Resize((224, 224), BICUBIC)`), scale to 0..1 and normalise with the OpenAI CLIP mean/std.
`preprocess_array` is the same without torch (the ONNX Runtime recogniser's input)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from tcm.recognition.config import RecognizerConfig

if TYPE_CHECKING:  # imported where a tensor is built: preprocess_array runs without torch
    from torch import Tensor


def preprocess(images: np.ndarray | Sequence[np.ndarray], cfg: RecognizerConfig) -> Tensor:
    """uint8 RGB crops, a (B, H, W, 3) array or a sequence of (H_i, W_i, 3) / (H_i, W_i) arrays of any size ->
    float32 (B, 3, cfg.image_size[0], cfg.image_size[1]), normalised."""
    import torch

    return normalize(torch.from_numpy(resize_crops(images, cfg)).permute(0, 3, 1, 2), cfg)  # (B, 3, H, W)


def preprocess_array(images: np.ndarray | Sequence[np.ndarray], cfg: RecognizerConfig) -> np.ndarray:
    """`preprocess` in numpy: float32 (B, 3, H, W), the same values (the same float32 operations)."""
    x = resize_crops(images, cfg).transpose(0, 3, 1, 2).astype(np.float32)  # (B, H, W, 3) -> (B, 3, H, W)
    mean = np.asarray(cfg.pixel_mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(cfg.pixel_std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (x / np.float32(255.0) - mean) / std


def resize_crops(images: np.ndarray | Sequence[np.ndarray], cfg: RecognizerConfig) -> np.ndarray:
    """uint8 (B, H, W, 3) at the model's size (bicubic); ValueError naming the crop that is not a uint8 RGB or
    grey image."""
    H, W = cfg.image_size
    out = np.empty((len(images), H, W, 3), np.uint8)
    for b, image in enumerate(images):
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise ValueError(f"image {b}: expected uint8 pixels, got {image.dtype}")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)  # grey -> RGB
        if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"image {b}: expected an (H, W, 3) RGB crop, got shape {image.shape}")
        if image.shape[:2] != (H, W):
            image = np.asarray(Image.fromarray(image).resize((W, H), Image.BICUBIC))
        out[b] = image
    return out


def normalize(images: Tensor, cfg: RecognizerConfig) -> Tensor:
    """uint8 (or float 0..255) RGB images (B, 3, H, W) -> (x / 255 - mean) / std in float32."""
    import torch

    mean = torch.tensor(cfg.pixel_mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.pixel_std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
