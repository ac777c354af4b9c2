"""SCUT-CTW1500: curved text lines, in two annotation kinds, both read by `parse` (told apart by content).

- Training XML `NNNN.xml` beside `NNNN.jpg`: `<Annotations><image file="0001.jpg"><box height= left= top=
  width=><label>text</label><segs>x1,y1,...,x14,y14</segs><pts x= y=/>...</box></image></Annotations>`.
  `<segs>` is authoritative (`<pts>` is used only when a box has no `<segs>`); the label is kept as written.
- Test TXT `000NNNN.txt` beside `NNNN.jpg` (mmocr's rule `(\\d{4}).jpg -> 000\\1.txt`): lines
  `x1,y1,...,xn,yn,####transcription`, any even number of coordinates. The legacy 32-value `text_label_curve`
  lines (box + offsets, no `####`) are refused rather than misread.

`###` as the transcription (TXT) or label (XML) is don't care, and stays the text. Pairing key: the integer
value of the digits, so `1001.jpg`, `0001001.txt` -> `1001` and `0001.jpg`, `0001.xml` -> `1`.
`write` writes the TXT kind (`annotation_name` names it); `write_xml` / `xml_annotation_name` the XML kind.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

from tcm.data.formats import _common as c
from tcm.types import AnnotationError, Instance

IGNORE = "###"  # don't-care transcription of the test labels
_TEXT_SEP = ",####"  # between the coordinates and the transcription of a TXT line
_DIGITS = re.compile(r"\d+", re.ASCII)
# Characters XML 1.0 can hold (a writer check); `\r` is left out because parsers turn it into `\n`.
_XML_CHAR = re.compile("[\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")


def _digits_key(stem: str) -> str | None:
    return str(int(stem)) if _DIGITS.fullmatch(stem) else None


@dataclass
class _Box:
    line_no: int
    label: str | None = None
    segs: str | None = None
    pts: list[tuple[str, str]] = field(default_factory=list)


class _XmlBoxes:
    """Collects the `<box>` elements of a CTW1500 XML with expat, which tells the line of every element."""

    def __init__(self, source: str):
        self.source = source
        self.boxes: list[_Box] = []
        self.box: _Box | None = None
        self.field: str | None = None  # "label" or "segs" while inside one
        self.chunks: list[str] = []
        self.parser = expat.ParserCreate(encoding="utf-8")  # the text was decoded (and checked) as UTF-8
        self.parser.StartElementHandler = self.start
        self.parser.EndElementHandler = self.end
        self.parser.CharacterDataHandler = self.chunks.append

    def error(self, reason: str) -> AnnotationError:
        return AnnotationError(self.source, reason, self.parser.CurrentLineNumber)

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        if tag == "box":
            if self.box is not None:
                raise self.error("<box> inside another <box>")
            self.box = _Box(self.parser.CurrentLineNumber)
        elif self.box is not None and tag in ("label", "segs"):
            if getattr(self.box, tag) is not None:
                raise self.error(f"a <box> with two <{tag}>")
            self.field = tag
            self.chunks.clear()
        elif self.box is not None and tag == "pts":
            if "x" not in attrs or "y" not in attrs:
                raise self.error("<pts> without x= and y=")
            self.box.pts.append((attrs["x"], attrs["y"]))

    def end(self, tag: str) -> None:
        if self.box is None:
            return
        if tag == "box":
            self.boxes.append(self.box)
            self.box = None
        elif tag == self.field:
            setattr(self.box, tag, "".join(self.chunks))
            self.field = None

    def parse(self, text: str) -> list[_Box]:
        try:
            self.parser.Parse(text.encode("utf-8"), True)
        except expat.ExpatError as err:
            raise AnnotationError(
                self.source, f"malformed XML: {expat.ErrorString(err.code)}", err.lineno
            ) from None
        return self.boxes


def _parse_xml(text: str, source: str) -> list[Instance]:
    instances = []
    for box in _XmlBoxes(source).parse(text):
        if box.segs is not None:
            points = c.polygon(box.segs.split(","), source, box.line_no)  # (P, 2)
        elif box.pts:
            points = c.polygon([v for xy in box.pts for v in xy], source, box.line_no)  # (P, 2)
        else:
            raise AnnotationError(source, "a <box> without <segs> or <pts>", box.line_no)
        label = box.label or ""
        instances.append(Instance(points, label, ignore=label.strip() == IGNORE))
    return instances


def _parse_txt(text: str, source: str) -> list[Instance]:
    instances = []
    for line_no, line in c.lines(text):
        coords, sep, label = line.partition(_TEXT_SEP)
        if not sep:
            raise AnnotationError(
                source,
                "expected x1,y1,...,xn,yn,####transcription (legacy 32-value lines are not read)",
                line_no,
            )
        points = c.polygon(coords.split(","), source, line_no)  # (P, 2)
        instances.append(Instance(points, label, ignore=label.strip() == IGNORE))
    return instances


def _xml_text(text: str, where: str) -> str:
    if not _XML_CHAR.fullmatch(text):
        raise ValueError(
            f"{where}: {text!r} holds characters an XML label cannot keep (control characters, \\r)"
        )
    return escape(text)


class Ctw1500:
    name = "ctw1500"

    def image_key(self, path: str | os.PathLike[str]) -> str | None:
        parts = c.split_image_name(path)
        return _digits_key(parts[0]) if parts else None

    def annotation_key(self, path: str | os.PathLike[str]) -> str | None:
        stem, dot, ext = c.basename(path).rpartition(".")
        return _digits_key(stem) if dot and ext.lower() in ("txt", "xml") else None

    def parse(self, data: bytes, source: str) -> list[Instance]:
        text = c.decode(data, source)
        if text.lstrip().startswith("<"):
            return _parse_xml(text, source)
        return _parse_txt(text, source)

    def write(self, instances: Sequence[Instance]) -> bytes:
        """The test TXT kind: `x1,y1,...,xn,yn,####transcription` per instance."""
        rows = []
        for i, instance in enumerate(instances):
            where = f"{self.name} instance {i}"
            points = c.points_of(instance, where)
            rows.append(f"{c.flat(points)}{_TEXT_SEP}{c.line_text(instance, where, IGNORE)}")
        return c.encode_lines(rows)

    def write_xml(self, instances: Sequence[Instance], image_name: str) -> bytes:
        """The training XML kind, `<box>` attributes = the bounding box of the points."""
        out = ["<Annotations>", f"  <image file={quoteattr(image_name)}>"]
        for i, instance in enumerate(instances):
            where = f"{self.name} instance {i}"
            points = c.points_of(instance, where)
            label = c.line_text(instance, where, IGNORE)
            (left, top), (right, bottom) = points.min(axis=0), points.max(axis=0)
            size = {"height": bottom - top, "left": left, "top": top, "width": right - left}
            attrs = " ".join(f'{k}="{c.format_number(v)}"' for k, v in size.items())
            pts = "".join(f'<pts x="{c.format_number(x)}" y="{c.format_number(y)}"/>' for x, y in points)
            out.append(
                f"    <box {attrs}><label>{_xml_text(label, where)}</label><segs>{c.flat(points)}</segs>{pts}</box>"
            )
        out += ["  </image>", "</Annotations>"]
        return c.encode_lines(out)

    def annotation_name(self, image_name: str) -> str:
        """`1001.jpg` -> `0001001.txt` (the test TXT kind that `write` writes)."""
        return f"{int(self._key(image_name)):07d}.txt"

    def xml_annotation_name(self, image_name: str) -> str:
        """`0001.jpg` -> `0001.xml` (the training XML kind)."""
        return f"{int(self._key(image_name)):04d}.xml"

    def image_name(self, key: str, ext: str) -> str:
        if _digits_key(key) is None:
            raise ValueError(f"ctw1500 keys are digits, got {key!r}")
        return f"{int(key):04d}.{c.clean_ext(ext)}"

    def _key(self, image_name: str) -> str:
        key = self.image_key(image_name)
        if key is None:
            raise ValueError(f"{image_name!r} is not a CTW1500 image name (NNNN.jpg)")
        return key
