"""Readers and writers of every dataset format: round trips, hand-written files, errors, file pairing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tcm.data.formats import FORMATS, Ctw1500, DatasetFormat, get_format
from tcm.data.formats.td500 import rect_corners
from tcm.types import AnnotationError, Instance

FIXTURES = Path(__file__).resolve().parents[3] / ".." / "shared" / "fixtures" / "icdar2015"

# The text a don't-care instance reads back with: the format's marker (TD500 has no transcriptions).
IGNORE_TEXT = {"icdar2015": "###", "mlt17": "###", "ctw1500": "###", "totaltext": "#", "td500": ""}


def poly(*xy: float) -> np.ndarray:
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2)  # (2P,) -> (P, 2)


def box(xmin: float, ymin: float, xmax: float, ymax: float) -> np.ndarray:
    return poly(xmin, ymin, xmax, ymin, xmax, ymax, xmin, ymax)


def assert_instances(
    got: list[Instance], want: list[tuple[np.ndarray, str, bool]], atol: float = 0.0
) -> None:
    assert len(got) == len(want)
    for instance, (points, text, ignore) in zip(got, want, strict=True):
        assert instance.points.dtype == np.float64
        assert instance.points.shape == points.shape
        if atol:
            np.testing.assert_allclose(instance.points, points, rtol=0, atol=atol)
        else:
            np.testing.assert_array_equal(instance.points, points)
        assert (instance.text, instance.ignore) == (text, ignore)


# --- writer -> reader round trips --------------------------------------------------------------------------------

QUAD = poly(377, 117, 463, 117, 465, 130, 378, 130)
FLOAT_QUAD = poly(0.5, -1.25, 1e-7, 3.0, 1280.0000001, 719.9999, 2.5e6, 0.1)
CURVE = poly(*range(28))  # 14 points as in CTW1500
TEXTS = [
    "Genaxis Theatre",
    "a,b,,c",
    'say "hi"',
    "it's",
    "back\\slash",
    " spaced ",
    "",
    "中文,日本語",
    "####x",
]

ROUND_TRIPS: dict[str, list[Instance]] = {
    "icdar2013": [Instance(box(158, 128, 411, 181), t) for t in TEXTS]
    + [Instance(box(0.5, 1.25, 10.75, 20.125), "Footpath")],
    "icdar2015": [Instance(QUAD, t) for t in TEXTS]
    + [Instance(FLOAT_QUAD, "x"), Instance(QUAD, "dropped", ignore=True)],
    "mlt17": [Instance(QUAD, t) for t in TEXTS]
    + [Instance(FLOAT_QUAD, "x"), Instance(QUAD, "dropped", ignore=True)],
    "ctw1500": [Instance(CURVE, t) for t in TEXTS]
    + [Instance(FLOAT_QUAD, "x"), Instance(poly(1, 2, 3, 4, 5, 6), "tri"), Instance(CURVE, "x", ignore=True)],
    "totaltext": [Instance(CURVE, t) for t in TEXTS + ["[a], [b]", "u'x'", "\\u0041"]]
    + [Instance(FLOAT_QUAD, "x"), Instance(poly(1, 2, 3, 4, 5, 6), "tri"), Instance(QUAD, "x", ignore=True)],
}


def expected(name: str, instances: list[Instance]) -> list[tuple[np.ndarray, str, bool]]:
    """What reading back should give: TD500 has no transcriptions; don't-care instances read the marker."""
    texts = ["" if name == "td500" else IGNORE_TEXT[name] if i.ignore else i.text for i in instances]
    return [(i.points, text, i.ignore) for i, text in zip(instances, texts, strict=True)]


@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_round_trip_is_exact(name: str) -> None:
    fmt = get_format(name)
    instances = ROUND_TRIPS[name]
    data = fmt.write(instances)
    assert not data.startswith(b"\xef\xbb\xbf")  # written without a BOM
    assert_instances(fmt.parse(data, "written"), expected(name, instances))


def test_ctw1500_xml_round_trip_is_exact() -> None:
    fmt = Ctw1500()
    instances = ROUND_TRIPS["ctw1500"] + [Instance(CURVE, "<&> \"q\" 'a'")]
    data = fmt.write_xml(instances, "0001.jpg")
    assert data.lstrip().startswith(b"<Annotations>")
    assert_instances(fmt.parse(data, "0001.xml"), expected("ctw1500", instances))


def test_td500_round_trip_of_rotated_rectangles() -> None:
    fmt = get_format("td500")
    rects = [(10, 20, 30, 40, 0.0), (0.5, 7.25, 100, 3, 0.3), (640, 360, 55.5, 12, -2.9), (1, 1, 0, 5, 1.0)]
    instances = [Instance(rect_corners(*r), "dropped", ignore=i % 2 == 1) for i, r in enumerate(rects)]
    got = fmt.parse(fmt.write(instances), "written")
    assert_instances(got, expected("td500", instances), atol=1e-6)


# --- hand-written files as the datasets write them ---------------------------------------------------------------


def test_icdar2015_reads_bom_crlf_dont_care_and_commas() -> None:
    data = (
        "\ufeff377,117,463,117,465,130,378,130,Genaxis Theatre\r\n"
        "374,155,409,155,409,170,374,170,###\r\n"
        "\r\n"
        "1,2,3,4,5,6,7,8.5,a,b, c\r\n"
    ).encode()
    got = get_format("icdar2015").parse(data, "gt_img_1.txt")
    assert_instances(
        got,
        [
            (QUAD, "Genaxis Theatre", False),
            (poly(374, 155, 409, 155, 409, 170, 374, 170), "###", True),
            (poly(1, 2, 3, 4, 5, 6, 7, 8.5), "a,b, c", False),
        ],
    )


def test_mlt17_drops_the_script_and_keeps_commas() -> None:
    data = b"10,20,30,20,30,40,10,40,Latin,Hello, world\n1,1,2,1,2,2,1,2,Arabic,###\n"
    got = get_format("mlt17").parse(data, "gt_img_3.txt")
    assert_instances(
        got,
        [
            (poly(10, 20, 30, 20, 30, 40, 10, 40), "Hello, world", False),
            (poly(1, 1, 2, 1, 2, 2, 1, 2), "###", True),
        ],
    )


def test_icdar2013_reads_train_and_test_lines() -> None:
    data = b'158 128 411 181 "Footpath"\n38, 43, 920, 215, "Tiredness"\n1 2 3 4 "say \\"hi\\""\n'
    got = get_format("icdar2013").parse(data, "gt_100.txt")
    assert_instances(
        got,
        [(box(158, 128, 411, 181), "Footpath", False), (box(38, 43, 920, 215), "Tiredness", False)]
        + [(box(1, 2, 3, 4), 'say "hi"', False)],
    )


def test_td500_rotates_about_the_centre() -> None:
    data = b"0 0 10 20 30 40 0\n1 1 10 20 30 40 1.5707963267948966\n"
    got = get_format("td500").parse(data, "IMG_0059.gt")
    # theta = pi/2 about the centre (25, 40): (10, 20) -> (45, 25), (40, 20) -> (45, 55), ...
    want = [(poly(10, 20, 40, 20, 40, 60, 10, 60), "", False), (poly(45, 25, 45, 55, 5, 55, 5, 25), "", True)]
    assert_instances(got, want, atol=1e-9)


def test_totaltext_reads_wrapped_records_and_quotes() -> None:
    data = (
        b"x: [[115 503 494\n"
        b"   115]], y: [[322 346 426 404]], ornt: [u'h'], transcriptions: [u'nauGHTY']\n"
        b"x: [[1 2 3]], y: [[4 5\n6]], ornt: [u'#'], transcriptions: [u'#']\n"
        b"x: [[1 2 3]], y: [[4 5 6]], ornt: [u'c'], transcriptions: []\n"
        b"x: [[1 2 3]], y: [[4 5 6]], ornt: ['m'], transcriptions: [u\"it's, [ok]\"]\n"
        b"x: [[1 2 3]], y: [[4 5 6]], ornt: [u'c'], transcriptions: [u'\\xe9\\u00e9\\ud800\\U00110000\\n']\n"
    )
    got = get_format("totaltext").parse(data, "poly_gt_img11.txt")
    tri = poly(1, 4, 2, 5, 3, 6)
    want = [(poly(115, 322, 503, 346, 494, 426, 115, 404), "nauGHTY", False)]
    want += [(tri, "#", True), (tri, "", False), (tri, "it's, [ok]", False)]
    want += [(tri, "\u00e9\u00e9\\ud800\\U00110000\n", False)]  # escapes of no character stay as written
    assert_instances(got, want)


def test_ctw1500_reads_test_txt_lines() -> None:
    coords = ",".join(str(v) for v in range(100, 128))  # 28 values = 14 points
    data = f"{coords},####Hello, world\n1,2,3,4,5,6,#######\n".encode()
    got = get_format("ctw1500").parse(data, "0001001.txt")
    assert_instances(
        got, [(poly(*range(100, 128)), "Hello, world", False), (poly(1, 2, 3, 4, 5, 6), "###", True)]
    )


def test_ctw1500_reads_training_xml_segs() -> None:
    segs = ",".join(str(v) for v in range(28))
    data = f"""<?xml version="1.0" encoding="utf-8"?>
<Annotations>
  <image file="0001.jpg">
    <box height="27" left="0" top="1" width="26">
      <label>GOD &amp; CO</label>
      <segs>{segs}</segs>
      <pts x="999" y="999" />
    </box>
  </image>
</Annotations>
""".encode()
    got = get_format("ctw1500").parse(data, "0001.xml")
    assert_instances(got, [(CURVE, "GOD & CO", False)])  # segs win over pts


# --- errors name the file and the line ----------------------------------------------------------------------------

BAD_FILES = [
    ("icdar2015", b"1,2,3,4,5,6,7,8,ok\n1,2,3,4,5,6,7\n", 2, "fields"),
    ("icdar2015", b"1,2,3,4,5,6,7,nan,x\n", 1, "not a number"),
    ("icdar2015", b"1,2,3,4,5,6,7,1e999,x\n", 1, "not finite"),
    ("icdar2015", b"1,2,3,4,5,6,7,8,ok\n1,2,3,4,5,6,7,8,\xff\xfe\n", 2, "UTF-8"),
    ("mlt17", b"1,2,3,4,5,6,7,8,text only\n", 1, "fields"),
    ("icdar2013", b'1 2 3 "x"\n', 1, "fields"),
    ("icdar2013", b'1 2 3 four "x"\n', 1, "not a number"),
    ("td500", b"0 0 1 2 3 4 0\n0 2 1 2 3 4 0\n", 2, "difficult"),
    ("td500", b"0 0 1 2 3 4\n", 1, "fields"),
    ("td500", b"0 0 1e308 0 1e308 1 0\n", 1, "overflow"),
    ("ctw1500", b"1,2,3,4,5,####x\n", 1, "odd"),
    ("ctw1500", b"1,2,3,4,5,6,7,8\n", 1, "####"),
    ("ctw1500", b"<Annotations>\n<image>\n<box><segs>1,2</segs>\n</image>\n", 4, "malformed XML"),
    ("ctw1500", b"<Annotations>\n<box><label>x</label></box>\n</Annotations>", 2, "without <segs>"),
    ("totaltext", b"x: [[1 2 3]], y: [[4 5]], ornt: [u'c'], transcriptions: [u'a']\n", 1, "x values"),
    (
        "totaltext",
        b"x: [[1 2]], y: [[1 2]], ornt: [u'c'], transcriptions: [u'a']\nx: [[1]], y: oops\n",
        2,
        "x: [[...]]",
    ),
    ("totaltext", b"garbage\n", 1, "'x:'"),
]


@pytest.mark.parametrize(("name", "data", "line", "reason"), BAD_FILES)
def test_parse_errors_name_file_line_and_reason(name: str, data: bytes, line: int, reason: str) -> None:
    with pytest.raises(AnnotationError) as err:
        get_format(name).parse(data, "some/file.txt")
    assert (err.value.source, err.value.line) == ("some/file.txt", line)
    assert reason in err.value.reason


def test_parse_does_not_judge_geometry() -> None:
    got = get_format("ctw1500").parse(b"5,5,5,5,####degenerate\n", "x.txt")
    assert_instances(got, [(poly(5, 5, 5, 5), "degenerate", False)])


# --- writers refuse what they cannot write exactly ------------------------------------------------------------

BAD_WRITES = [
    ("icdar2013", Instance(QUAD, "x"), "axis-aligned"),
    ("icdar2013", Instance(box(1, 2, 3, 4), "x", ignore=True), "don't-care"),
    ("icdar2015", Instance(CURVE, "x"), "4 points"),
    ("icdar2015", Instance(QUAD, "a\nb"), "line break"),
    ("icdar2015", Instance(QUAD, "###"), "marker"),
    ("mlt17", Instance(poly(1, 2, 3, 4, 5, 6), "x"), "4 points"),
    ("ctw1500", Instance(CURVE, "x\r"), "line break"),
    ("totaltext", Instance(CURVE, "#"), "marker"),
    ("td500", Instance(poly(0, 0, 10, 0, 10, 5, 0, 5.1)), "not a rotated rectangle"),
    ("td500", Instance(poly(0, 0, 0, 5, 10, 5, 10, 0)), "not a rotated rectangle"),  # counter-clockwise order
    ("icdar2015", Instance(poly(0, 0, 1, 0, 1, math.nan, 0, 1), "x"), "finite"),
]


@pytest.mark.parametrize(("name", "instance", "reason"), BAD_WRITES)
def test_writers_refuse_what_the_format_cannot_hold(name: str, instance: Instance, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        get_format(name).write([instance])


def test_ctw1500_xml_writer_refuses_control_characters() -> None:
    with pytest.raises(ValueError, match="XML"):
        Ctw1500().write_xml([Instance(CURVE, "bell\x07")], "0001.jpg")


# --- real ICDAR 2015 ground truth ---------------------------------------------------------------------------------


def test_icdar2015_fixture_files() -> None:
    if not FIXTURES.is_dir():
        pytest.skip(f"ICDAR 2015 fixtures not present at {FIXTURES}")
    fmt = get_format("icdar2015")
    files = sorted((FIXTURES / "gts").glob("gt_img_*.txt"))
    assert files
    for path in files:
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
        rows = [row for row in text.splitlines() if row.strip()]
        instances = fmt.parse(data, str(path))
        assert len(instances) == len(rows)
        assert sum(i.ignore for i in instances) == sum(row.endswith(",###") for row in rows)
        assert all(i.points.shape == (4, 2) for i in instances)
        assert fmt.annotation_key(path) == fmt.image_key(
            FIXTURES / "images" / f"img_{fmt.annotation_key(path)}.jpg"
        )


# --- pairing images with annotations ----------------------------------------------------------------------------

PAIRS = [
    ("icdar2015", "img_12.jpg", "gt_img_12.txt"),
    ("mlt17", "img_7.gif", "gt_img_7.txt"),
    ("ctw1500", "1001.jpg", "0001001.txt"),
    ("ctw1500", "0001.jpg", "0001.xml"),
    ("totaltext", "img11.jpg", "poly_gt_img11.txt"),
    ("td500", "IMG_0059.JPG", "IMG_0059.gt"),
    ("td500", "IMG_0059.jpg", "IMG_0059.GT"),
    ("icdar2013", "100.jpg", "gt_100.txt"),
    ("icdar2013", "img_1.jpg", "gt_img_1.txt"),
]


@pytest.mark.parametrize(("name", "image", "annotation"), PAIRS)
def test_pairing_keys(name: str, image: str, annotation: str) -> None:
    fmt = get_format(name)
    key = fmt.image_key(f"s3://bucket/train/{image}")
    assert key is not None
    assert fmt.annotation_key(Path("/data") / annotation) == key
    assert fmt.image_key(annotation) is None
    assert fmt.annotation_key(image) is None


def test_pairing_keys_tell_images_apart() -> None:
    ic15, ctw = get_format("icdar2015"), get_format("ctw1500")
    assert ic15.image_key("img_12.jpg") != ic15.annotation_key("gt_img_1.txt")
    assert ctw.image_key("1001.jpg") != ctw.annotation_key("0001.xml")


FOREIGN = [
    ("icdar2015", "100.jpg", "gt_100.txt"),
    ("icdar2015", "img_1.txt", "gt_img_1.jpg"),
    ("mlt17", "image_1.png", "gt_image_1.txt"),
    ("ctw1500", "img_1.jpg", "gt_img_1.txt"),
    ("totaltext", "img_11.jpg", "gt_img11.txt"),
    ("td500", "IMG_0059.gt", "IMG_0059.txt"),
    ("icdar2013", "100.txt", "100.txt"),
]


@pytest.mark.parametrize(("name", "image", "annotation"), FOREIGN)
def test_foreign_names_have_no_key(name: str, image: str, annotation: str) -> None:
    fmt = get_format(name)
    assert fmt.image_key(image) is None
    assert fmt.annotation_key(annotation) is None


NAMES = [
    ("icdar2013", "100", "jpg", "100.jpg", "gt_100.txt"),
    ("icdar2015", "12", ".jpg", "img_12.jpg", "gt_img_12.txt"),
    ("mlt17", "7", "png", "img_7.png", "gt_img_7.txt"),
    ("ctw1500", "1001", "jpg", "1001.jpg", "0001001.txt"),
    ("totaltext", "11", "jpg", "img11.jpg", "poly_gt_img11.txt"),
    ("td500", "IMG_0059", "JPG", "IMG_0059.JPG", "IMG_0059.gt"),
]


@pytest.mark.parametrize(("name", "key", "ext", "image", "annotation"), NAMES)
def test_names_from_keys_pair_back(name: str, key: str, ext: str, image: str, annotation: str) -> None:
    fmt = get_format(name)
    assert fmt.image_name(key, ext) == image
    assert fmt.annotation_name(image) == annotation
    assert fmt.image_key(image) == fmt.annotation_key(annotation) == key


def test_ctw1500_xml_annotation_name() -> None:
    fmt = Ctw1500()
    assert fmt.xml_annotation_name("0001.jpg") == "0001.xml"
    assert fmt.annotation_key(fmt.xml_annotation_name("0001.jpg")) == fmt.image_key("0001.jpg") == "1"


def test_get_format_knows_every_name() -> None:
    formats: list[DatasetFormat] = [get_format(name) for name in FORMATS]
    assert [f.name for f in formats] == list(FORMATS)
    with pytest.raises(ValueError, match="icdar2015"):
        get_format("icdar2017")
