"""The ICDAR 2015 task 4.3 cropped-word dataset: `word_<n>.png` images beside one label file in the 4.3 form
(`word_<n>.png, "text"`, see `words43`). The official archives name the label file `gt.txt` (training) or
`Challenge4_Test_Task3_GT.txt` (test); a folder holds exactly one label file, images named relative to it."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from pathlib import Path

from tcm.data.formats import words43
from tcm.data.formats.words43 import WordLabel

LABEL_FILE = "gt.txt"  # what the writer produces (the training archive's name)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def find_label_file(files: list[str]) -> str:
    """The one `.txt` label file among a listing (relative paths); ValueError naming what was found."""
    texts = [f for f in files if f.lower().endswith(".txt")]
    if len(texts) != 1:
        found = ", ".join(texts[:5]) or "none"
        raise ValueError(f"expected exactly one 4.3 label file (.txt, e.g. gt.txt) under the source, found {found}")
    return texts[0]


def image_files(files: list[str], label_file: str) -> dict[str, str]:
    """{name as the label file writes it: relative path} for every image beside / below the label file."""
    root = posixpath.dirname(label_file)
    prefix = root + "/" if root else ""
    return {
        f[len(prefix) :]: f for f in files if f.startswith(prefix) and f.lower().endswith(IMAGE_SUFFIXES)
    }


def read_labels(data: bytes, source: str) -> list[WordLabel]:
    """The label file's lines (AnnotationError naming file and line for anything malformed)."""
    return words43.parse(data, source)


def write_folder(folder: str | Path, samples: Iterable[tuple[str, bytes, str]]) -> None:
    """Write (name, encoded image, text) samples as folder/<name> + folder/gt.txt (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    for name, data, text in samples:
        (folder / name).write_bytes(data)
        labels.append(WordLabel(name=name, text=text))
    (folder / LABEL_FILE).write_bytes(words43.write(labels))
