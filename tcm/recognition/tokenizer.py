"""Label <-> token ids of the recogniser (PARSeq/CLIP4STR `Tokenizer`, reference/clip4str.md §4, §5).

itos = [E] + charset + [B] + [P]: with the 94-char charset [E] = 0, characters 1..94, [B] = 95, [P] = 96. The
decoders' heads predict the first len(charset) + 1 classes only ([E] and the characters; never [B] or [P]).
Decoding is numpy (a tensor is converted): the ONNX Runtime recogniser decodes without importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tcm.recognition.charset import CharsetAdapter

if TYPE_CHECKING:  # torch is imported where a tensor is built: decoding works without it
    import torch
    from torch import Tensor

EOS, BOS, PAD = "[E]", "[B]", "[P]"


class Tokenizer:
    def __init__(self, charset: str):
        self.charset = charset
        self.itos: tuple[str, ...] = (EOS, *charset, BOS, PAD)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.eos_id, self.bos_id, self.pad_id = 0, len(charset) + 1, len(charset) + 2

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def num_classes(self) -> int:
        """Head outputs: [E] + the characters (95 for the 94-char charset)."""
        return len(self.charset) + 1

    def encode(self, labels: Sequence[str], device: torch.device | str | None = None) -> Tensor:
        """(B, L + 2) int64: [B], the characters, [E], then [P] up to the longest label L.

        Raises ValueError naming the label and character when a character is outside the charset (labels are
        expected to have gone through `preprocess_label` with the same charset)."""
        if len(labels) == 0:
            raise ValueError("Tokenizer.encode: no labels")
        import torch

        rows = []
        for label in labels:
            try:
                ids = [self.stoi[c] for c in label]
            except KeyError as e:
                raise ValueError(
                    f"label {label!r}: character {e.args[0]!r} is not in the {len(self.charset)}-character charset "
                    "(run tcm.recognition.charset.preprocess_label first)"
                ) from None
            rows.append([self.bos_id, *ids, self.eos_id])
        L2 = max(len(r) for r in rows)  # L + 2
        out = torch.full((len(rows), L2), self.pad_id, dtype=torch.long)
        for b, row in enumerate(rows):
            out[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out.to(device) if device is not None else out

    def ids_to_texts(self, ids: Any, adapter: CharsetAdapter | None = None) -> list[str]:
        """Greedy ids (B, T) (a tensor or an array) -> strings cut at the first [E] (ids >= num_classes are dropped), then `adapter`."""
        texts = []
        for row in ids.tolist():
            chars = []
            for i in row:
                if i == self.eos_id:
                    break
                if 0 < i < self.num_classes:
                    chars.append(self.itos[i])
            text = "".join(chars)
            texts.append(adapter(text) if adapter is not None else text)
        return texts

    def decode(self, logits: Tensor | np.ndarray) -> tuple[list[str], list[float]]:
        """Greedy decoding of logits (B, T, num_classes) (a tensor, on any device, or an array): the argmax string
        cut at the first [E], and its confidence = the product of the per-step max probabilities up to and
        including [E] (all T steps when no [E] was predicted). Computed in float32 numpy."""
        if not isinstance(logits, np.ndarray):
            logits = logits.detach().float().cpu().numpy()
        B, T, C = logits.shape
        if C != self.num_classes:
            raise ValueError(f"logits have {C} classes, the tokenizer {self.num_classes}")
        x = logits.astype(np.float32, copy=False)
        exp = np.exp(x - x.max(-1, keepdims=True))  # (B, T, C), shifted: no overflow
        probs = exp / exp.sum(-1, keepdims=True)  # (B, T, C) softmax
        ids = probs.argmax(-1)  # (B, T)
        max_probs = np.take_along_axis(probs, ids[..., None], -1)[..., 0]  # (B, T)
        texts = self.ids_to_texts(ids)
        is_eos = ids == self.eos_id  # (B, T)
        # steps counted: up to and including the first [E]; steps after it are neutral (probability 1)
        after_eos = (is_eos.cumsum(-1) - is_eos) > 0  # (B, T): strictly after the first [E]
        confidences = np.where(after_eos, np.float32(1.0), max_probs).prod(-1)  # (B,)
        return texts, [float(c) for c in confidences]
