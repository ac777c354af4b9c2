"""Charsets, the charset adapter and label preprocessing of the STR protocol (clip4str.md §6).

One place for them: training labels, ingest filtering and `tcm score --protocol recognition` all use these.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass

# The training charset in the released order: the order fixes the token ids ([E]=0, chars 1..94, [B], [P]).
CHARSET_94 = string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation
CHARSET_62 = string.digits + string.ascii_lowercase + string.ascii_uppercase  # test.py --cased
CHARSET_36 = string.digits + string.ascii_lowercase  # the STR benchmarks' test charset
CHARSETS = {36: CHARSET_36, 62: CHARSET_62, 94: CHARSET_94}
MAX_LABEL_LENGTH = 25  # PARSeq / CLIP4STR max_label_length (26 decoding positions with [E])


class CharsetAdapter:
    """Lower-case (or upper-case) a label when the target charset is all one case, then drop every character
    outside the charset (PARSeq's CharsetAdapter)."""

    def __init__(self, charset: str):
        self.charset = charset
        self.lowercase_only = charset == charset.lower()
        self.uppercase_only = charset == charset.upper()
        self._unsupported = re.compile(f"[^{re.escape(charset)}]")

    def __call__(self, label: str) -> str:
        if self.lowercase_only:
            label = label.lower()
        elif self.uppercase_only:
            label = label.upper()
        return self._unsupported.sub("", label)


@dataclass(frozen=True)
class Preprocessed:
    """A label after preprocessing: `label` is None when the sample is dropped, with the reason."""

    label: str | None
    reason: str = ""


def normalize_label(label: str) -> str:
    """Whitespace removed, then NFKD folded to ASCII (steps 1-2 of the protocol)."""
    label = "".join(label.split())
    return unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()


def preprocess_label(label: str, charset: str, max_length: int = MAX_LABEL_LENGTH) -> Preprocessed:
    """The STR label preprocessing in its released order: whitespace removed, NFKD to ASCII, dropped when
    longer than `max_length` *before* charset filtering, charset adapter, dropped when empty."""
    label = normalize_label(label)
    if len(label) > max_length:
        return Preprocessed(None, f"longer than {max_length} characters after normalisation ({len(label)})")
    label = CharsetAdapter(charset)(label)
    if not label:
        return Preprocessed(None, "empty after the charset adapter")
    return Preprocessed(label)
