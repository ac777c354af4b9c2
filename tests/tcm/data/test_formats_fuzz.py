"""Fuzzing the readers (nothing but AnnotationError escapes) and the writers (write -> parse is exact)."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcm.data.formats import FORMATS, Ctw1500, get_format
from tcm.data.formats.td500 import rect_corners
from tcm.types import AnnotationError, Instance

# 300 examples per reader and strategy keep the file near 15 s of CPU; no example database written into the repo.
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=75, deadline=None, database=None)

NUMBERS = ["0", "1", "7", "42", "-3", "1.5", ".5", "5.", "1e3", "1e999", "-0", "nan", "inf", "١", "1_0", " "]
ALPHABETS: dict[str, list[str]] = {
    "icdar2015": NUMBERS + [",", "\n", "\r\n", "###", "a b", "\ufeff", "é"],
    "mlt17": NUMBERS + [",", "\n", "\r\n", "###", "Latin", "中", "\ufeff"],
    "icdar2013": NUMBERS + [", ", ",", '"', '\\"', "\\", "\n", "Footpath"],
    "td500": NUMBERS + ["\n", "\t", "0 1 ", "1e308", "3.141592653589793", "-1e308"],
    "ctw1500": NUMBERS
    + [",", ",####", "###", "\n", "<Annotations>", "</Annotations>", "<image file='1.jpg'>", "</image>"]
    + ["<box>", "</box>", "<label>", "</label>", "<segs>", "</segs>", "<pts x='1' y='2'/>", "<pts/>", "&amp;"]
    + ["&", "<!DOCTYPE a [<!ENTITY e 'x'>]>", "&e;", "<?xml version='1.0'?>", "\ufeff"],
    "totaltext": NUMBERS
    + ["x:", "y:", "ornt:", "transcriptions:", "[[", "]]", "[", "]", ", ", "u'", "'", '"', "\\", "#"]
    + ["\\x41", "\\u00e9", "\\U00110000", "\\ud800", "\n", "\n   "],
}


@functools.cache
def seeds(name: str) -> list[bytes]:
    """Valid files of the format, for the mutation strategy to start from."""
    fmt = get_format(name)
    quad = np.array([[1, 2], [30, 2], [30, 40], [1, 40]], dtype=np.float64)  # an axis-aligned box
    instances = [Instance(quad, "a, 'b' \"c\""), Instance(quad, "x", ignore=name != "icdar2013")]
    files = [fmt.write(instances)]
    if name == "ctw1500":
        files.append(Ctw1500().write_xml(instances, "0001.jpg"))
    if name == "totaltext":
        files.append(
            b"x: [[115 503 494\n 115]], y: [[322 346 426 404]], ornt: [u'h'], transcriptions: [u'n']\n"
        )
    return files


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds(name))))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        match draw(st.sampled_from(["replace", "insert", "delete"])):
            case "replace" if pos < len(data):
                data[pos] = draw(st.integers(0, 255))
            case "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
            case _:
                del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


def check_parse(name: str, data: bytes) -> None:
    """The reader either raises AnnotationError naming the source, or returns well-formed instances."""
    try:
        instances = get_format(name).parse(data, "fuzz.txt")
    except AnnotationError as err:
        assert err.source == "fuzz.txt"
        assert err.line is None or err.line >= 1
        assert err.reason
        return
    for instance in instances:
        assert isinstance(instance, Instance)
        assert instance.points.dtype == np.float64
        assert instance.points.ndim == 2 and instance.points.shape[1] == 2
        assert np.isfinite(instance.points).all()
        assert isinstance(instance.ignore, bool)
        instance.text.encode("utf-8")  # no lone surrogates: the text must go into Parquet


def joined(sep: str, tokens: list[str], min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(tokens), min_size=min_size, max_size=max_size).map(sep.join)


# Fields of structured lines: mostly numbers a reader accepts (overflowing ones included), sometimes not.
VALID_NUMBERS = ["0", "1", "7", "42", "-3", "1.5", ".5", "5.", "1e3", "-0", "1e308", "-1e308"]
NUM = st.sampled_from(VALID_NUMBERS * 6 + ["nan", "inf", "1e999", "١", "1_0", " ", "", "x"])


def nums(sep: str, min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.lists(NUM, min_size=min_size, max_size=max_size).map(sep.join)


def structured_line(name: str) -> st.SearchStrategy[str]:
    """One line (or record) shaped like the format's own, with mostly valid and sometimes bad fields."""
    text = joined("", ALPHABETS[name], 0, 4)
    match name:
        case "icdar2015":
            return st.tuples(nums(",", 7, 9), text).map(",".join)
        case "mlt17":
            return st.tuples(nums(",", 8, 9), st.sampled_from(["Latin", "", "##"]), text).map(",".join)
        case "icdar2013":
            return st.sampled_from([" ", ", "]).flatmap(
                lambda sep: st.tuples(nums(sep, 3, 5), text).map(sep.join)
            )
        case "td500":
            flag = st.sampled_from(["0", "1", "2", "1.0"])
            return st.tuples(NUM, flag, nums(" ", 4, 6)).map(" ".join)
        case "ctw1500":
            txt = st.tuples(nums(",", 0, 16), st.sampled_from([",####", ",###", ""]), text).map("".join)
            label = st.sampled_from(["", "<label>x</label>", "<label>###</label>", "<label/>"])
            segs = st.one_of(st.just(""), nums(",", 0, 8).map(lambda v: f"<segs>{v}</segs>"))
            pt = st.tuples(NUM, NUM).map(lambda p: f'<pts x="{p[0]}" y="{p[1]}"/>') | st.just('<pts x="1"/>')
            pts = st.lists(pt, max_size=3).map("".join)
            boxes = st.lists(
                st.tuples(label, segs, pts).map(lambda b: "<box>" + "".join(b) + "</box>"), max_size=3
            )
            return txt | boxes.map(lambda b: "<Annotations><image>" + "".join(b) + "</image></Annotations>")
        case _:  # totaltext
            array = st.tuples(nums(" ", 0, 3), st.sampled_from([" ", "\n  "]), nums(" ", 0, 3))
            arrays = array.map(lambda a: f"[[{''.join(a)}]]")  # "\n": a record wrapped over lines
            quote = st.sampled_from([("u'", "'"), ("'", "'"), ('"', '"'), ("", ""), ("u'", "")])
            quoted = st.tuples(quote, text).map(lambda q: q[0][0] + q[1] + q[0][1])
            ornt = st.one_of(st.just(""), quoted.map(lambda o: f"ornt: [{o}], "))
            record = st.tuples(arrays, arrays, ornt, quoted)
            return record.map(lambda r: f"x: {r[0]}, y: {r[1]}, {r[2]}transcriptions: [{r[3]}]")


def alphabet_text(name: str) -> st.SearchStrategy[bytes]:
    soup = joined("", ALPHABETS[name], 0, 60)
    structured = st.lists(structured_line(name), max_size=4).map("\n".join)
    return (soup | structured).map(lambda s: s.encode("utf-8"))


@pytest.mark.parametrize("name", FORMATS)
def test_reader_survives_arbitrary_and_mutated_bytes(name: str) -> None:
    FUZZ(given(st.binary(max_size=400) | mutated(name))(lambda data: check_parse(name, data)))()


@pytest.mark.parametrize("name", FORMATS)
def test_reader_survives_its_own_alphabet(name: str) -> None:
    FUZZ(given(alphabet_text(name))(lambda data: check_parse(name, data)))()


# --- writer -> reader round trips on generated instances ----------------------------------------------------

COORD = st.one_of(
    st.integers(-100_000, 100_000).map(float),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)
# Arbitrary characters, with the ones that mean something to some format (quotes, escapes, separators) often.
SPECIAL = st.sampled_from(list("\\'\",#[]<>&;ntxuU0 \t"))
ANY_CHAR = st.characters(codec="utf-8", exclude_characters="\n\r") | SPECIAL
XML_CHAR = (
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"), exclude_characters="\ufffe\uffff") | SPECIAL
)


def points(min_p: int, max_p: int) -> st.SearchStrategy[np.ndarray]:
    flat = st.integers(min_p, max_p).flatmap(lambda p: st.lists(COORD, min_size=2 * p, max_size=2 * p))
    return flat.map(lambda v: np.asarray(v, dtype=np.float64).reshape(-1, 2))  # (2P,) -> (P, 2)


def texts(chars: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    # A list of characters, not st.text: text() merges a union alphabet into one uniform range, which would
    # make the SPECIAL characters as rare as any other code point.
    return st.lists(chars, max_size=20).map("".join) | st.lists(SPECIAL, max_size=12).map("".join)


def instances(
    pts: st.SearchStrategy[np.ndarray], marker: str, chars: st.SearchStrategy[str] = ANY_CHAR
) -> st.SearchStrategy[list[Instance]]:
    text = texts(chars).filter(lambda t: t.strip() != marker)
    return st.lists(st.builds(Instance, pts, text, st.booleans()), max_size=5)


def assert_round_trip(name: str, given_: list[Instance], got: list[Instance], marker: str) -> None:
    assert len(got) == len(given_)
    for a, b in zip(given_, got, strict=True):
        np.testing.assert_array_equal(b.points, a.points)
        assert b.ignore == a.ignore
        assert b.text == (marker if a.ignore else a.text), name


@pytest.mark.parametrize(
    ("name", "min_p", "max_p", "marker"),
    [
        ("icdar2015", 4, 4, "###"),
        ("mlt17", 4, 4, "###"),
        ("ctw1500", 1, 16, "###"),
        ("totaltext", 0, 16, "#"),
    ],
)
def test_writer_round_trip(name: str, min_p: int, max_p: int, marker: str) -> None:
    fmt = get_format(name)

    @ROUND_TRIP
    @given(instances(points(min_p, max_p), marker))
    def run(given_: list[Instance]) -> None:
        assert_round_trip(name, given_, fmt.parse(fmt.write(given_), "written"), marker)

    run()


@ROUND_TRIP
@given(instances(points(1, 16), "###", XML_CHAR))
def test_ctw1500_xml_writer_round_trip(given_: list[Instance]) -> None:
    fmt = Ctw1500()
    assert_round_trip("ctw1500 xml", given_, fmt.parse(fmt.write_xml(given_, "0001.jpg"), "written"), "###")


@ROUND_TRIP
@given(st.lists(st.tuples(COORD, COORD, COORD, COORD, texts(ANY_CHAR)), max_size=5))
def test_icdar2013_writer_round_trip(boxes: list[tuple[float, float, float, float, str]]) -> None:
    fmt = get_format("icdar2013")
    given_ = [Instance(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]), t) for x0, y0, x1, y1, t in boxes]
    assert_round_trip("icdar2013", given_, fmt.parse(fmt.write(given_), "written"), "")


SIDE = st.floats(0, 2000, allow_nan=False)
POSITION = st.floats(-10_000, 10_000, allow_nan=False)


@ROUND_TRIP
@given(
    st.lists(
        st.tuples(POSITION, POSITION, SIDE, SIDE, st.floats(-math.pi, math.pi), st.booleans()), max_size=5
    )
)
def test_td500_writer_round_trip(rects: list[tuple[float, float, float, float, float, bool]]) -> None:
    fmt = get_format("td500")
    given_ = [Instance(rect_corners(x, y, w, h, t), ignore=ignore) for x, y, w, h, t, ignore in rects]
    got = fmt.parse(fmt.write(given_), "written")
    assert [i.ignore for i in got] == [i.ignore for i in given_]
    for a, b in zip(given_, got, strict=True):
        np.testing.assert_allclose(b.points, a.points, rtol=0, atol=1e-6)
