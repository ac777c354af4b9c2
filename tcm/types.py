"""Plain data types shared by readers, codecs, evaluation and pipelines (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Instance:
    """One annotated text instance: a polygon of P >= 3 points in pixel coordinates of the raw image."""

    points: np.ndarray  # (P, 2) float64, x then y
    text: str = ""
    ignore: bool = False  # don't care: `###`, `#`, TD500 difficult=1, ...


@dataclass
class Detection:
    """One predicted instance: a polygon and its confidence in [0, 1]."""

    points: np.ndarray  # (P, 2) float64
    score: float = 1.0


class AnnotationError(ValueError):
    """An annotation file (or one line of it) cannot be read. Names the file and the line."""

    def __init__(self, source: str, reason: str, line: int | None = None):
        self.source = source
        self.line = line
        self.reason = reason
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")
