"""Folder-at-once readers for `tcm score`: every plain file of a folder parsed by one pyarrow CSV call.

A detection submission or an IC15 ground-truth file is "plain" when its lines all have the same number of
comma-separated fields and nothing unusual (no blank line inside, no lone `\\r`, a GT transcription without a
comma). Plain files of the same shape are concatenated and parsed by pyarrow's C++ CSV reader (one thread:
the CPU cost is what counts), with the column types the protocol requires (int64 coordinates for submissions,
so `1.5` or `1_0` fail; float64 for GT coordinates; no quoting, no null values), and the orientation of every
polygon checked in one vectorised pass. Anything pyarrow refuses, and every file that is not plain, goes to
the line-by-line parsers of pipelines/score.py, which give the same result or the exact `file:line` error.
So this module only changes the speed (benchmarks/eval_speed.py: the whole command), never an outcome.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from tcm.evaluation import PackedPolygons, clockwise_packed

BOM = b"\xef\xbb\xbf"


def _plain(data: bytes) -> bytes | None:
    """The file's bytes as one `\\n`-terminated line per record, or None when it is not plain."""
    data = data.removeprefix(BOM).replace(b"\r\n", b"\n").rstrip(b"\n")
    if not data or b"\r" in data or b"\n\n" in data or data.startswith(b"\n"):
        return None
    return data + b"\n"


def _read_csv(buf: bytes, types: dict):
    """A pyarrow Table, or None when pyarrow refuses the text (a bad number, a field too many or too few)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        return pacsv.read_csv(
            pa.py_buffer(buf),
            read_options=pacsv.ReadOptions(column_names=list(types), use_threads=False),
            parse_options=pacsv.ParseOptions(quote_char=False, double_quote=False, escape_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowException, ValueError):
        return None


def submissions(items: dict[Path, bytes]):
    """{path: Submission} for the plain files among `items` (path -> raw bytes); the others are left out."""
    from pipelines.score import Submission  # the result type of the line-by-line parser

    groups: dict[int, list[tuple[Path, bytes, int]]] = defaultdict(list)
    for path, raw in items.items():
        data = _plain(raw)
        if data is None:
            continue
        n_fields = data[: data.index(b"\n")].count(b",") + 1
        if n_fields - n_fields % 2 >= 8:  # fewer than 8 coordinates: the line parser names the line
            groups[n_fields].append((path, data, data.count(b"\n")))
    out = {}
    for n_fields, files in groups.items():
        n_coords = n_fields - n_fields % 2  # an odd count: the last field is the confidence
        types = {f"c{i}": _int64() for i in range(n_coords)}
        if n_fields % 2:
            types["score"] = _float64()
        table = _read_csv(b"".join(data for _, data, _ in files), types)
        if table is None:
            continue
        coords = np.column_stack([table.column(i).to_numpy() for i in range(n_coords)]).astype(np.float64)
        scores = table.column("score").to_numpy().astype(np.float64) if n_fields % 2 else np.ones(len(coords))
        if not np.isfinite(scores).all():
            continue  # the line parser names the line
        N = len(coords)  # (N, n_coords) every line of the group
        packed, ccw = clockwise_packed(PackedPolygons(coords.reshape(-1, 2), np.full(N, n_coords // 2)))
        flat = packed.flat.reshape(N, n_coords // 2, 2)  # (N, P, 2)
        start = 0
        for path, _, n in files:
            out[path] = Submission(
                PackedPolygons(
                    flat[start : start + n].reshape(-1, 2), np.full(n, n_coords // 2, dtype=np.int64)
                ),
                scores[start : start + n],
                np.arange(1, n + 1, dtype=np.int64),
                int(ccw[start : start + n].sum()),
            )
            start += n
    return out


def icdar2015_ground_truth(items: dict[Path, bytes]):
    """{path: GroundTruth} for the plain IC15 GT files (no comma in any transcription); others left out."""
    from pipelines.score import GroundTruth

    files = []
    for path, raw in items.items():
        data = _plain(raw)
        if data is not None and data.count(b",") == 8 * data.count(b"\n"):  # exactly 8 commas on every line
            files.append((path, data, data.count(b"\n")))
    if not files:
        return {}
    types = {f"c{i}": _float64() for i in range(8)} | {"text": _string()}
    table = _read_csv(b"".join(data for _, data, _ in files), types)
    if table is None:
        return {}
    coords = np.column_stack([table.column(i).to_numpy() for i in range(8)])  # (N, 8)
    if not np.isfinite(coords).all():
        return {}  # `nan` / `inf`: the format's reader names the line
    ignore = np.array([t.strip() == "###" for t in table.column("text").to_pylist()], dtype=bool)  # (N,)
    out = {}
    start = 0
    for path, _, n in files:
        out[path] = GroundTruth(
            path, PackedPolygons.quads(coords[start : start + n]), ignore[start : start + n]
        )
        start += n
    return out


def _int64():
    import pyarrow as pa

    return pa.int64()


def _float64():
    import pyarrow as pa

    return pa.float64()


def _string():
    import pyarrow as pa

    return pa.string()
