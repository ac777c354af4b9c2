"""Annotation readers and writers, one module per dataset; `get_format(name)` picks one (docs/CONTRACTS.md)."""

from __future__ import annotations

from tcm.data.formats._common import DatasetFormat
from tcm.data.formats.ctw1500 import Ctw1500
from tcm.data.formats.icdar2013 import Icdar2013
from tcm.data.formats.icdar2015 import Icdar2015
from tcm.data.formats.mlt17 import Mlt17
from tcm.data.formats.td500 import Td500
from tcm.data.formats.totaltext import TotalText

FORMATS: tuple[str, ...] = ("icdar2013", "icdar2015", "td500", "ctw1500", "totaltext", "mlt17")

__all__ = [
    "FORMATS",
    "Ctw1500",
    "DatasetFormat",
    "Icdar2013",
    "Icdar2015",
    "Mlt17",
    "Td500",
    "TotalText",
    "get_format",
]


def get_format(name: str) -> DatasetFormat:
    """The reader/writer of dataset `name` (one of FORMATS)."""
    match name:
        case "icdar2013":
            return Icdar2013()
        case "icdar2015":
            return Icdar2015()
        case "td500":
            return Td500()
        case "ctw1500":
            return Ctw1500()
        case "totaltext":
            return TotalText()
        case "mlt17":
            return Mlt17()
        case _:
            raise ValueError(f"unknown dataset format {name!r}; known: {', '.join(FORMATS)}")
