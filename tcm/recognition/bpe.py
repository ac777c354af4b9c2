"""CLIP's byte-pair encoding of captions without torch: the ids `open_clip.tokenizer.tokenize` gives, from the
merge list open_clip ships (`bpe_simple_vocab_16e6.txt.gz`, found beside the package without importing it, which
would import torch). `OnnxRecognizer` runs it between its two sessions; `tests/tcm/recognition/test_bpe.py` checks
it against open_clip id for id.

The algorithm (CLIP, reference/clip4str.md §3): clean the text (ftfy, HTML unescape twice, collapse whitespace,
lower-case), split it into pieces (contractions, letter runs, single digits, other non-space runs), map each
piece's UTF-8 bytes to printable characters, merge adjacent symbols pair by pair, lowest merge rank first, the
last symbol marked with `</w>`; ids index the vocabulary [256 byte symbols, the same with `</w>`, one per merge,
<start_of_text>, <end_of_text>]. A caption becomes SOT, ids, EOT, zero padding to the context length; a longer one
is cut and ends with EOT.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # CLIP's vocabulary is 49408 = 256 bytes x 2 + 48894 merges + 2 specials
SOT, EOT = "<start_of_text>", "<end_of_text>"
PIECES = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def byte_map() -> dict[int, str]:
    """byte -> the printable character standing for it, in vocabulary order: bytes that are printable Latin-1
    characters stand for themselves (listed first, by value), every other byte for chr(256 + k), k counting them
    in byte order (listed after)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in set(printable)]
    return dict(zip(printable + others, [chr(b) for b in printable] + [chr(256 + k) for k in range(len(others))], strict=True))


def vocabulary_path() -> Path:
    spec = importlib.util.find_spec("open_clip")  # locates the package; runs none of its code
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"open_clip is not installed: its {VOCAB_FILE} holds CLIP's BPE merges")
    return Path(spec.origin).parent / VOCAB_FILE


class ClipBPE:
    """`ClipBPE()(captions, context_length)` -> (B, Lc) int64, as `open_clip.tokenizer.tokenize`."""

    def __init__(self, path: str | Path | None = None):
        import regex

        lines = gzip.open(path or vocabulary_path()).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]  # line 0 is a version header
        self.bytes = byte_map()
        symbols = list(self.bytes.values())  # dict order: the vocabulary's
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.ids = {token: i for i, token in enumerate(vocab)}  # a repeated string keeps its last index
        self.ranks = {pair: r for r, pair in enumerate(merges)}
        self.pieces = regex.compile(PIECES, regex.IGNORECASE)
        self.sot, self.eot = self.ids[SOT], self.ids[EOT]
        self._merged: dict[str, list[str]] = {}
        self._encoded: dict[str, tuple[int, ...]] = {}  # predicted words repeat; cleaning costs ~0.5 ms each

    def merge(self, piece: str) -> list[str]:
        """The BPE symbols of one byte-mapped piece (cached)."""
        if piece in (SOT, EOT):
            return [piece]
        cached = self._merged.get(piece)
        if cached is not None:
            return cached
        word = [*piece[:-1], piece[-1] + "</w>"]
        while len(word) > 1:
            ranked = [(self.ranks.get(pair, NUM_MERGES), pair) for pair in zip(word, word[1:], strict=False)]
            rank, (left, right) = min(ranked, key=lambda x: x[0])
            if rank == NUM_MERGES:  # no adjacent pair is a merge
                break
            merged, k = [], 0
            while k < len(word):  # every occurrence of the pair, left to right, without overlap
                if k + 1 < len(word) and word[k] == left and word[k + 1] == right:
                    merged.append(left + right)
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            word = merged
        self._merged[piece] = word
        return word

    def encode(self, caption: str) -> tuple[int, ...]:
        """BPE ids of one caption, without SOT/EOT (cached)."""
        import ftfy

        if caption in self._encoded:
            return self._encoded[caption]
        text = " ".join(html.unescape(html.unescape(ftfy.fix_text(caption))).strip().split()).lower()
        out: list[int] = []
        for piece in self.pieces.findall(text):
            mapped = "".join(self.bytes[b] for b in piece.encode("utf-8"))
            out += [self.ids[s] for s in self.merge(mapped)]
        self._encoded[caption] = tuple(out)
        return self._encoded[caption]

    def __call__(self, captions: Sequence[str], context_length: int) -> np.ndarray:
        out = np.zeros((len(captions), context_length), dtype=np.int64)  # (B, Lc), 0 = padding
        for b, caption in enumerate(captions):
            ids = [self.sot, *self.encode(caption), self.eot]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot  # cut, still ending with EOT
            out[b, : len(ids)] = ids
        return out


@lru_cache(maxsize=1)
def clip_bpe() -> ClipBPE:
    """The process's one `ClipBPE` (reading the merges takes ~0.3 s)."""
    return ClipBPE()
