"""Scene-text recognition (STR) protocol: word accuracy and 1 - NED, per dataset and combined (clip4str.md §6).

- Ground truth: `preprocess_label` with the chosen charset, in the released order (whitespace removed, NFKD to
  ASCII, dropped when longer than 25 *before* charset filtering, charset adapter, dropped when empty). Dropped
  words are not counted; how many and why is reported.
- Predictions: only the CharsetAdapter of the same charset (as `BaseSystem._eval_step` treats decoded output:
  no NFKD, no length limit).
- Word accuracy: exact match after that, over the counted words. Charset 36 (`[0-9a-z]`, lower-cased) is the
  benchmark protocol; 62 (cased alphanumerics) and 94 (cased, with ASCII punctuation) the `--cased` /
  `--punctuation` variants.
- NED per word = Levenshtein(pred, gt) / max(len(pred), len(gt)) (unit costs, `rapidfuzz`); the reported
  1 - NED = 1 - mean NED. Figures are fractions here (the released tables print them x 100).
- The combined row of several datasets is sample-weighted: Σ n_i x metric_i / Σ n_i (`test.py`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from rapidfuzz.distance import Levenshtein

from tcm.recognition.charset import CHARSETS, MAX_LABEL_LENGTH, CharsetAdapter, preprocess_label


@dataclass(frozen=True)
class WordScore:
    name: str
    gt: str  # after preprocessing
    pred: str  # after the charset adapter ("" when the word had no prediction)
    correct: bool
    ned: float
    has_prediction: bool = True


@dataclass
class RecognitionResult:
    """One dataset's scores; `n` counts the words kept after GT preprocessing."""

    dataset: str
    charset: int
    n: int
    accuracy: float
    one_minus_ned: float
    per_word: list[WordScore] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # word name -> why its GT was dropped

    @property
    def dropped_reasons(self) -> dict[str, int]:
        """How many words were dropped for each reason (the reason without its per-word figure)."""
        return dict(Counter(reason.split(" (")[0] for reason in self.dropped.values()))


def normalized_edit_distance(pred: str, gt: str) -> float:
    """Levenshtein(pred, gt) / max(len(pred), len(gt)); 0 when both are empty."""
    longest = max(len(pred), len(gt))
    return Levenshtein.distance(pred, gt) / longest if longest else 0.0


def charset_of(size: int) -> str:
    try:
        return CHARSETS[size]
    except KeyError:
        raise ValueError(f"unknown charset size {size}: use 36, 62 or 94") from None


def score_words(
    gt: Iterable[tuple[str, str]],
    pred: Mapping[str, str],
    charset: int = 36,
    dataset: str = "",
    max_length: int = MAX_LABEL_LENGTH,
) -> RecognitionResult:
    """Score (name, GT text) pairs against predictions by name; a word without one reads as ""."""
    chars = charset_of(charset)
    adapt = CharsetAdapter(chars)
    words: list[WordScore] = []
    dropped: dict[str, str] = {}
    for name, text in gt:
        kept = preprocess_label(text, chars, max_length)
        if kept.label is None:
            dropped[name] = kept.reason
            continue
        has = name in pred
        p = adapt(pred[name]) if has else ""
        words.append(
            WordScore(name, kept.label, p, p == kept.label, normalized_edit_distance(p, kept.label), has)
        )
    n = len(words)
    accuracy = sum(w.correct for w in words) / n if n else 0.0
    one_minus_ned = 1.0 - sum(w.ned for w in words) / n if n else 0.0
    return RecognitionResult(dataset, charset, n, accuracy, one_minus_ned, words, dropped)


@dataclass(frozen=True)
class TableRow:
    dataset: str
    n: int
    accuracy: float
    one_minus_ned: float


def combined(results: Sequence[RecognitionResult], name: str = "combined") -> TableRow:
    """The sample-weighted row over several datasets: Σ n_i x metric_i / Σ n_i."""
    total = sum(r.n for r in results)
    if total == 0:
        return TableRow(name, 0, 0.0, 0.0)
    accuracy = sum(r.accuracy * r.n for r in results) / total
    one_minus_ned = sum(r.one_minus_ned * r.n for r in results) / total
    return TableRow(name, total, accuracy, one_minus_ned)


def results_table(results: Sequence[RecognitionResult]) -> list[TableRow]:
    """One row per dataset, then the combined row (what `test.py print_results_table` prints)."""
    rows = [TableRow(r.dataset, r.n, r.accuracy, r.one_minus_ned) for r in results]
    return rows + [combined(results)]


def format_table(rows: Sequence[TableRow]) -> str:
    """Markdown table, figures in % as the released tables print them."""
    lines = ["| dataset | words | accuracy % | 1 - NED % |", "|---|---|---|---|"]
    lines += [f"| {r.dataset} | {r.n} | {100 * r.accuracy:.2f} | {100 * r.one_minus_ned:.2f} |" for r in rows]
    return "\n".join(lines)
