"""The ICDAR 2015 task 4.3 cropped-word label form: one line per word, `word_<n>.png, "text"`.

The text is double-quoted; inside it `\\"` is a quote and `\\\\` a backslash (the official GT files escape
quotes this way, e.g. `word_12.png, "\\"HOTEL"`). Used for ground truth, for recogniser predictions
(`tcm recognize`, `tcm score --protocol recognition`) and by the cropped-word dataset reader/writer.
A prediction line may carry a confidence after the text: `word_1.png, "text", 0.9731`.

Readers raise `AnnotationError(source, reason, line)`, so every error names the file and the line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tcm.data.formats._common import decode, lines
from tcm.types import AnnotationError


@dataclass(frozen=True)
class WordLabel:
    """One line: the crop's file name, its text, and a confidence when the line has one."""

    name: str
    text: str
    confidence: float | None = None
    line: int = 0  # 1-based line in the file it came from (0: not read from a file)


def _unquote(field: str, source: str, line_no: int) -> tuple[str, str]:
    """(text, rest after the closing quote) of a field that starts with `"`, honouring `\\"` and `\\\\`."""
    if not field.startswith('"'):
        raise AnnotationError(source, f'text must be double-quoted, got {field[:40]!r}', line_no)
    out: list[str] = []
    i = 1
    while i < len(field):
        ch = field[i]
        if ch == "\\" and i + 1 < len(field) and field[i + 1] in '"\\':
            out.append(field[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), field[i + 1 :]
        out.append(ch)
        i += 1
    raise AnnotationError(source, "text has no closing quote", line_no)


def parse_line(line: str, source: str, line_no: int) -> WordLabel:
    """One `name, "text"[, confidence]` line; AnnotationError naming file and line for anything else."""
    name, comma, rest = line.partition(",")
    name = name.strip()
    if not comma or not name:
        raise AnnotationError(source, 'expected `word_<n>.png, "text"`', line_no)
    text, tail = _unquote(rest.strip(), source, line_no)
    tail = tail.strip()
    confidence: float | None = None
    if tail:
        if not tail.startswith(","):
            raise AnnotationError(source, f"unexpected {tail[:40]!r} after the text", line_no)
        token = tail[1:].strip()
        try:
            confidence = float(token)
        except ValueError:
            raise AnnotationError(source, f"confidence {token[:40]!r} is not a number", line_no) from None
    return WordLabel(name=name, text=text, confidence=confidence, line=line_no)


def parse(data: bytes, source: str) -> list[WordLabel]:
    """Every non-blank line of a label file (UTF-8, BOM allowed); a crop named twice is an error."""
    out: list[WordLabel] = []
    seen: dict[str, int] = {}
    for line_no, line in lines(decode(data, source)):
        label = parse_line(line, source, line_no)
        if label.name in seen:
            raise AnnotationError(source, f"{label.name} already labelled on line {seen[label.name]}", line_no)
        seen[label.name] = line_no
        out.append(label)
    return out


def quote(text: str) -> str:
    """`"text"` with `\\` and `"` escaped (the inverse of the reader)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_line(label: WordLabel) -> str:
    if "\n" in label.text or "\r" in label.text:
        raise ValueError(f"{label.name}: a label cannot hold a line break")
    line = f"{label.name}, {quote(label.text)}"
    return line if label.confidence is None else f"{line}, {label.confidence:.4f}"


def write(labels: Iterable[WordLabel]) -> bytes:
    """The file's bytes: one line per label, `\\r\\n` endings as the official files have."""
    return "".join(format_line(label) + "\r\n" for label in labels).encode("utf-8")
