"""Shared helpers of the recognition tests: word images drawn with Pillow's FreeType and the DejaVu font matplotlib
ships (no other module of the project is needed), a single-threaded torch, the tiny recogniser."""

from __future__ import annotations

import string
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from tcm.recognition.build import build_recognizer
from tcm.recognition.config import RecognizerConfig
from tcm.recognition.model import CLIP4STR

FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
WORD_CHARS = string.ascii_letters + string.digits


def render_word(word: str, size: int = 28, rng: np.random.Generator | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB: `word` in dark ink on a light background, cropped to the ink with a small margin."""
    font = ImageFont.truetype(str(FONT), size)
    left, top, right, bottom = font.getbbox(word)
    margin = size // 4
    background = (235, 235, 225) if rng is None else tuple(int(c) for c in rng.integers(190, 256, 3))
    ink = (20, 20, 30) if rng is None else tuple(int(c) for c in rng.integers(0, 70, 3))
    image = Image.new("RGB", (right - left + 2 * margin, bottom - top + 2 * margin), background)
    ImageDraw.Draw(image).text((margin - left, margin - top), word, font=font, fill=ink)
    return np.asarray(image)


def random_words(n: int, rng: np.random.Generator, min_len: int = 3, max_len: int = 8) -> list[str]:
    """`n` distinct random alphanumeric words (mixed case), each min_len..max_len characters."""
    words: list[str] = []
    while len(words) < n:
        word = "".join(rng.choice(list(WORD_CHARS), int(rng.integers(min_len, max_len + 1))))
        if word not in words:
            words.append(word)
    return words


@pytest.fixture(autouse=True)
def one_thread():
    """Small ops on 2 shared cores run faster single-threaded (no OpenMP contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_quietly(cfg: RecognizerConfig, seed: int = 0) -> CLIP4STR:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no CLIP weights": random init is the point here
        return build_recognizer(cfg)


@pytest.fixture(scope="module")
def tiny_cfg() -> RecognizerConfig:
    return RecognizerConfig.tiny()
