"""ICDAR 2015 Incidental Scene Text (RRC challenge 4): `img_<N>.jpg` + `gt_img_<N>.txt`.

Lines `x1,y1,x2,y2,x3,y3,x4,y4,transcription`: integer corners clockwise from the top left (floats accepted),
the transcription is the rest of the line and may hold commas; `###` marks a don't-care instance, whose text
stays `###`. The originals are UTF-8 with a BOM; the writer writes none (every reader here accepts both).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from tcm.data.formats import _common as c
from tcm.types import Instance

IGNORE = "###"  # the RRC don't-care transcription
_LAYOUT = "x1,y1,...,x4,y4,transcription"


class Icdar2015:
    name = "icdar2015"

    def image_key(self, path: str | os.PathLike[str]) -> str | None:
        return c.rrc_image_key(path)

    def annotation_key(self, path: str | os.PathLike[str]) -> str | None:
        return c.rrc_annotation_key(path)

    def parse(self, data: bytes, source: str) -> list[Instance]:
        instances = []
        for line_no, line in c.lines(c.decode(data, source)):
            fields = c.comma_fields(line, 9, source, line_no, _LAYOUT)
            text = fields[8]
            points = c.polygon(fields[:8], source, line_no)  # (4, 2)
            instances.append(Instance(points, text, ignore=text.strip() == IGNORE))
        return instances

    def write(self, instances: Sequence[Instance]) -> bytes:
        rows = []
        for i, instance in enumerate(instances):
            where = f"{self.name} instance {i}"
            points = c.points_of(instance, where)
            if points.shape != (4, 2):
                raise ValueError(f"{where}: ICDAR2015 lines hold exactly 4 points, got {len(points)}")
            rows.append(f"{c.flat(points)},{c.line_text(instance, where, IGNORE)}")
        return c.encode_lines(rows)

    def annotation_name(self, image_name: str) -> str:
        return c.rrc_annotation_name(image_name, self.name)

    def image_name(self, key: str, ext: str) -> str:
        return c.rrc_image_name(key, ext, self.name)
