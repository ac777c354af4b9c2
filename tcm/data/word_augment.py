"""Training augmentation for word images: timm's RandAugment as CLIP4STR / PARSeq configure it (clip4str.md §6).

3 ops per image, picked without replacement, each applied with probability 0.5, at magnitude 5 of 10. The pool
is timm's "increasing" RandAugment transforms without SharpnessIncreasing (it fights the blur op), plus
GaussianBlur and PoissonNoise: 16 ops. Level-to-argument rules follow the released code: Rotate up to 30
degrees with `expand=True` (no character is cut off), ShearX 0.9, ShearY 0.2, TranslateX 10 % and TranslateY
30 % of the side at magnitude 10 (half of each at magnitude 5), each randomly negated; GaussianBlur radius and
PoissonNoise lambda are magnitude/10 x 4 and x 40, binned to integers no larger than 2 % / 20 % of the long
side (odd lambdas), as PARSeq's ops do. timm's own op functions, `AugmentOp` (probability, magnitude clamp) and
`RandAugment` (uniform choice weights = without replacement) do the work; nothing in timm is patched globally.

timm draws from Python's `random` and NumPy's global generator: `augment_word` seeds both from the caller's
seed for the call and restores them after, so the result depends only on (image, seed).
Then `to_model_input`: bicubic resize to the model size (a square stretch, no aspect padding) and normalise
with the OpenAI CLIP mean / std.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from timm.data import auto_augment as aa


def _aa():
    """timm's auto_augment module, imported on first use (timm pulls in torch: configs import this module)."""
    from timm.data import auto_augment

    return auto_augment

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's pixel statistics (clip4str.md §6, openai_meanstd)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class WordAugmentConfig:
    num_layers: int = 3  # ops per image (PARSeq / CLIP4STR rand_augment_transform)
    magnitude: int = 5  # of timm's 10: effective ranges are half the hparams below
    prob: float = 0.5  # each picked op is applied with this probability (timm's default)
    rotate_deg: float = 30.0  # at magnitude 10
    shear_x: float = 0.9  # text tolerates strong horizontal shear ...
    shear_y: float = 0.2  # ... but little vertical shear
    translate_x: float = 0.10  # fraction of the width
    translate_y: float = 0.30  # fraction of the height
    blur_radius: float = 4.0  # GaussianBlur radius at magnitude 10
    poisson_lambda: float = 40.0  # PoissonNoise lambda at magnitude 10
    image_size: tuple[int, int] = (224, 224)  # (H, W): CLIP4STR's square ViT-B/16 input
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD


def _signed_level(level: float, _hparams: dict, scale: float) -> tuple[float]:
    """timm's magnitude -> argument rule with our own scale: level/10 x scale, randomly negated."""
    return (_aa()._randomly_negate(level / _aa()._LEVEL_DENOM * scale),)


def _level(level: float, _hparams: dict, scale: float) -> tuple[float]:
    return (level / _aa()._LEVEL_DENOM * scale,)


def _capped(level: float, img: Image.Image, frac: float, floor: int = 1) -> int:
    """An integer argument, no larger than `frac` of the image's long side (small crops get mild ops)."""
    return round(min(level, max(floor, frac * max(img.size))))


def _rotate_expand(img: Image.Image, degrees: float, **kwargs) -> Image.Image:
    return _aa().rotate(img, degrees, expand=True, **kwargs)


def _gaussian_blur(img: Image.Image, radius: float, **_) -> Image.Image:
    return _aa().gaussian_blur(img, _capped(radius, img, 0.02))


def _poisson_noise(img: Image.Image, lam: float, **_) -> Image.Image:
    """Additive Poisson noise with a random sign per pixel, the same for every channel."""
    lam = _capped(lam, img, 0.2) | 1  # odd lambdas, as PARSeq bins them
    pixels = np.asarray(img).astype(np.int32)  # (H, W, C)
    H, W = pixels.shape[:2]
    noise = np.random.poisson(lam, (H, W)) * np.random.choice((-1, 1), (H, W))  # (H, W)
    out = pixels + (noise[..., None] if pixels.ndim == 3 else noise)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode=img.mode)


def _op(name: str, cfg: WordAugmentConfig, fn=None, level=None) -> aa.AugmentOp:
    """timm's AugmentOp for `name`, with its function / level rule replaced where CLIP4STR's differ."""
    op = _aa().AugmentOp("GaussianBlur" if name == "PoissonNoise" else name, prob=cfg.prob, magnitude=cfg.magnitude)
    op.name = name
    if fn is not None:
        op.aug_fn = fn
    if level is not None:
        op.level_fn = level
    return op


def rand_augment(cfg: WordAugmentConfig = WordAugmentConfig()) -> aa.RandAugment:
    """The 16-op RandAugment (see the module docstring)."""
    overrides = {
        "Rotate": (_rotate_expand, partial(_signed_level, scale=cfg.rotate_deg)),
        "ShearX": (None, partial(_signed_level, scale=cfg.shear_x)),
        "ShearY": (None, partial(_signed_level, scale=cfg.shear_y)),
        "TranslateXRel": (None, partial(_signed_level, scale=cfg.translate_x)),
        "TranslateYRel": (None, partial(_signed_level, scale=cfg.translate_y)),
        "GaussianBlur": (_gaussian_blur, partial(_level, scale=cfg.blur_radius)),
        "PoissonNoise": (_poisson_noise, partial(_level, scale=cfg.poisson_lambda)),
    }
    names = [n for n in _aa()._RAND_INCREASING_TRANSFORMS if n != "SharpnessIncreasing"] + ["GaussianBlur", "PoissonNoise"]
    ops = [_op(n, cfg, *overrides.get(n, (None, None))) for n in names]
    # explicit uniform weights make timm choose without replacement (no op twice on one image)
    return _aa().RandAugment(ops, cfg.num_layers, choice_weights=[1.0 / len(ops)] * len(ops))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python's and NumPy's global generators seeded for the block, restored after it."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def augment_word(image: Image.Image, seed: int, ra: aa.RandAugment) -> Image.Image:
    """One RandAugment draw for an RGB PIL image, fully determined by `seed`."""
    with seeded(seed):
        return ra(image)


def to_model_input(image: Image.Image, cfg: WordAugmentConfig = WordAugmentConfig()) -> np.ndarray:
    """RGB PIL image -> (3, H, W) float32: bicubic resize to cfg.image_size, scaled to [0, 1], normalised."""
    H, W = cfg.image_size
    pixels = np.asarray(image.convert("RGB").resize((W, H), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    pixels = (pixels - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)  # (H, W, 3)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))  # (H, W, 3) -> (3, H, W)
