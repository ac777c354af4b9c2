"""ICDAR 2017 MLT (RRC challenge 8): `img_<N>.{jpg,png,gif}` + `gt_img_<N>.txt`.

Lines `x1,y1,...,x4,y4,script,transcription`: the transcription is everything after the 9th comma (no
escaping, may hold commas); `###` marks a don't-care instance, whose text stays `###`. The script (Arabic, Latin,
Chinese, Japanese, Korean, Bangla, Symbols, Mixed, None) is dropped by the reader: `Instance` has no field for
it and nothing downstream uses it. The writer writes one script for every line (`script=`, default Latin).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from tcm.data.formats import _common as c
from tcm.types import Instance

IGNORE = "###"  # the RRC don't-care transcription
_LAYOUT = "x1,y1,...,x4,y4,script,transcription"


class Mlt17:
    name = "mlt17"

    def image_key(self, path: str | os.PathLike[str]) -> str | None:
        return c.rrc_image_key(path)

    def annotation_key(self, path: str | os.PathLike[str]) -> str | None:
        return c.rrc_annotation_key(path)

    def parse(self, data: bytes, source: str) -> list[Instance]:
        instances = []
        for line_no, line in c.lines(c.decode(data, source)):
            fields = c.comma_fields(line, 10, source, line_no, _LAYOUT)
            text = fields[9]  # fields[8] is the script, dropped (see the module docstring)
            points = c.polygon(fields[:8], source, line_no)  # (4, 2)
            instances.append(Instance(points, text, ignore=text.strip() == IGNORE))
        return instances

    # Latin: the script of ASCII text, what a generated file most likely holds; the reader drops it anyway.
    def write(self, instances: Sequence[Instance], script: str = "Latin") -> bytes:
        if "," in script or "\n" in script or "\r" in script:
            raise ValueError(f"mlt17: the script {script!r} cannot contain a comma or a line break")
        rows = []
        for i, instance in enumerate(instances):
            where = f"{self.name} instance {i}"
            points = c.points_of(instance, where)
            if points.shape != (4, 2):
                raise ValueError(f"{where}: MLT17 lines hold exactly 4 points, got {len(points)}")
            rows.append(f"{c.flat(points)},{script},{c.line_text(instance, where, IGNORE)}")
        return c.encode_lines(rows)

    def annotation_name(self, image_name: str) -> str:
        return c.rrc_annotation_name(image_name, self.name)

    def image_name(self, key: str, ext: str) -> str:
        return c.rrc_image_name(key, ext, self.name)
