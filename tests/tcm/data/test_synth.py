"""The synthetic generator: determinism, exact round trips through every format reader, geometry, pixels."""

from __future__ import annotations

from functools import cache
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely

from tcm.data import synth
from tcm.data.formats import FORMATS, get_format

N_IMAGES = 4  # per format for the file round trip: enough instances of every kind at ~8 words per image
N_RENDER = 12  # per layout for the in-memory geometry checks (~100 words)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@cache  # rendered once per layout and shared by the tests (read-only)
def _rendered(fmt: str | None, n: int = N_RENDER) -> tuple[synth.Rendered, ...]:
    layout = synth.DEFAULT_LAYOUT if fmt is None else synth.layout_for(fmt)
    return tuple(synth.render_layers(synth.image_rng(0, "train", k), layout=layout) for k in range(n))


def _short_side(points: np.ndarray) -> float:
    (_, _), (w, h), _ = cv2.minAreaRect(points.astype(np.float32))
    return min(w, h)


# ------------------------------------------------------------------------------------------------ determinism


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path):
    a = synth.write_dataset("icdar2015", tmp_path / "a", n=3, seed=7)
    b = synth.write_dataset("icdar2015", tmp_path / "b", n=3, seed=7)
    c = synth.write_dataset("icdar2015", tmp_path / "c", n=3, seed=8)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(fa) == 6 and fa == fb
    assert fa.keys() == fc.keys()
    assert all(fa[k] != fc[k] for k in fa if k.endswith(".jpg"))
    assert [name for name, _ in a] == [name for name, _ in b] == [name for name, _ in c]
    assert any(not np.array_equal(x[1][0].points, y[1][0].points) for x, y in zip(a, c, strict=True))
    for (_, ia), (_, ib) in zip(a, b, strict=True):
        assert len(ia) == len(ib)
        assert all(
            np.array_equal(x.points, y.points) and x.text == y.text for x, y in zip(ia, ib, strict=True)
        )


def test_image_depends_on_seed_split_and_index_only(tmp_path: Path):
    short = synth.write_dataset("totaltext", tmp_path / "short", n=2, seed=3)
    long = synth.write_dataset("totaltext", tmp_path / "long", n=3, seed=3)
    test = synth.write_dataset("totaltext", tmp_path / "short", n=2, seed=3, split="test")
    fs, fl = _files(tmp_path / "short" / "train"), _files(tmp_path / "long" / "train")
    assert all(fl[k] == v for k, v in fs.items())  # the first 2 of 3 are the 2 of 2
    ft = _files(tmp_path / "short" / "test")
    assert ft.keys() == fs.keys() and all(ft[k] != fs[k] for k in fs)  # same names, other pictures
    assert [n for n, _ in short] == [n for n, _ in long[:2]] == [n for n, _ in test]


# --------------------------------------------------------------------------------------------- file round trip


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_dataset_reads_back_exactly(tmp_path: Path, fmt: str):
    form = get_format(fmt)
    written = synth.write_dataset(fmt, tmp_path, n=N_IMAGES, seed=11, height=192, width=320)
    assert len(written) == N_IMAGES
    assert len({name for name, _ in written}) == N_IMAGES
    total = 0
    for name, instances in written:
        image_path = tmp_path / "train" / "images" / name
        assert image_path.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        assert image.shape == (192, 320, 3)
        assert form.image_key(name) is not None
        annotation = tmp_path / "train" / "annotations" / form.annotation_name(name)
        assert form.annotation_key(annotation) == form.image_key(name)
        parsed = form.parse(annotation.read_bytes(), str(annotation))
        assert len(parsed) == len(instances) > 0
        for got, want in zip(parsed, instances, strict=True):
            assert (got.text, got.ignore) == (want.text, want.ignore)
            assert got.points.shape == want.points.shape
            if fmt == "td500":
                np.testing.assert_allclose(got.points, want.points, rtol=0, atol=1e-6)
            else:
                assert np.array_equal(got.points, want.points)
                assert np.array_equal(want.points, np.rint(want.points))  # integer formats
        total += len(instances)
    assert total >= 2 * N_IMAGES


def _is_axis_aligned_box(p: np.ndarray) -> bool:
    return (
        p.shape == (4, 2)
        and p[0, 1] == p[1, 1]
        and p[2, 1] == p[3, 1]
        and p[0, 0] == p[3, 0]
        and p[1, 0] == p[2, 0]
    )


def _is_rectangle(p: np.ndarray) -> bool:
    edges = np.roll(p, -1, axis=0) - p  # (4, 2)
    dots = (edges * np.roll(edges, -1, axis=0)).sum(1)  # (4,) consecutive edges are perpendicular
    return p.shape == (4, 2) and np.abs(dots).max() < 1e-6 * np.abs(edges).max() ** 2


def _receding(p: np.ndarray) -> bool:
    left, right = np.hypot(*(p[3] - p[0])), np.hypot(*(p[2] - p[1]))
    return min(left, right) > 8 and min(left, right) < 0.85 * max(left, right)


@pytest.mark.parametrize("fmt", FORMATS)
def test_geometry_fits_the_format(fmt: str):
    instances = [i for r in _rendered(fmt) for i in r.instances]
    points = [i.points for i in instances]
    match fmt:
        case "icdar2013":
            assert all(_is_axis_aligned_box(p) for p in points)
            assert not any(i.ignore for i in instances)  # IC13 has no don't care
        case "icdar2015" | "mlt17":
            assert all(p.shape == (4, 2) for p in points)
            assert sum(not _is_axis_aligned_box(p) for p in points) > len(points) // 3  # rotated, perspective
            assert sum(_receding(p) for p in points) > 0  # perspective: one end shorter than the other
        case "td500":
            assert all(_is_rectangle(p) for p in points)
            assert sum(not _is_axis_aligned_box(p) for p in points) > len(points) // 3
            assert all(i.text == "" for i in instances)
        case "ctw1500":
            assert all(p.shape == (14, 2) for p in points)
        case "totaltext":
            assert {len(p) for p in points} > {4}
    if fmt != "icdar2013":
        assert any(i.ignore for i in instances)
        marker = {"totaltext": "#", "td500": ""}.get(fmt, "###")
        assert all(i.text == marker for i in instances if i.ignore)


@pytest.mark.parametrize("fmt", ["ctw1500", "totaltext"])
def test_curved_text_exists(fmt: str):
    def bend(p: np.ndarray) -> float:  # largest distance of a top-edge point from the top-edge chord
        top = p[: len(p) // 2]
        d = top[-1] - top[0]
        v = top - top[0]  # (k, 2)
        return float(np.abs(d[0] * v[:, 1] - d[1] * v[:, 0]).max() / np.hypot(*d))

    curved = [
        i.points for r in _rendered(fmt) for i in r.instances if len(i.points) > 4 and bend(i.points) > 3
    ]
    assert len(curved) >= 5


# ------------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("fmt", [None, *FORMATS])
def test_polygons_valid_inside_clockwise_disjoint(fmt: str | None):
    for r in _rendered(fmt):
        H, W, _ = r.image.shape
        polys = [shapely.Polygon(i.points) for i in r.instances]
        for inst, poly in zip(r.instances, polys, strict=True):
            p = inst.points
            assert p.dtype == np.float64 and p.ndim == 2 and p.shape[1] == 2 and len(p) % 2 == 0
            assert (p >= 0).all() and (p[:, 0] <= W - 1).all() and (p[:, 1] <= H - 1).all()
            assert poly.is_valid and poly.area > 0
            x, y = p[:, 0], p[:, 1]
            assert (x * np.roll(y, -1) - np.roll(x, -1) * y).sum() > 0  # clockwise on screen (y down)
            # the first point is the word's top-left: on the left half and the upper half of the text box
            assert x[0] < np.median(x) and y[0] <= y[len(p) - 1] + 1
        for a, b in combinations(polys, 2):
            assert not a.intersects(b)


def test_sizes_tiny_and_ignore():
    instances = [i for r in _rendered(None, 30) for i in r.instances]
    short = np.array([_short_side(i.points) for i in instances])
    ignore = np.array([i.ignore for i in instances])
    assert len(instances) >= 30 * 5
    assert 0.03 < (short < 8).mean() < 0.25  # some deliberately tiny words
    assert 0.03 < ignore.mean() < 0.25
    legible = short[(short >= 8) & ~ignore]
    assert ((legible >= 11) & (legible <= 41)).mean() > 0.8  # most words 12-40 px tall at 256 x 256


def test_larger_images_get_larger_words():
    small = [_short_side(i.points) for r in _rendered(None, 30)[:6] for i in r.instances]
    rng = [synth.image_rng(0, "train", k) for k in range(6)]
    big = [_short_side(i.points) for g in rng for i in synth.render_layers(g, 512, 512).instances]
    assert np.median(big) > 1.5 * np.median(small)


def test_render_image_matches_layers():
    image, instances = synth.render_image(synth.image_rng(5, "train", 1), 200, 300)
    r = synth.render_layers(synth.image_rng(5, "train", 1), 200, 300)
    assert image.shape == (200, 300, 3) and image.dtype == np.uint8
    assert np.array_equal(image, r.image) and len(instances) == len(r.instances)


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="icdar2015"):
        synth.layout_for("coco")


# --------------------------------------------------------------------------------------------------- pixels


def _ink(r: synth.Rendered) -> tuple[np.ndarray, np.ndarray]:
    """x, y of every pixel the words changed."""
    diff = np.abs(r.image.astype(np.int16) - r.background.astype(np.int16)).max(axis=2)  # (H, W)
    ys, xs = np.nonzero(diff > 0)
    return xs.astype(np.float64), ys.astype(np.float64)


@pytest.mark.parametrize("fmt", [None, "icdar2015", "td500", "ctw1500"])
def test_word_pixels_lie_inside_their_polygons(fmt: str | None):
    for r in _rendered(fmt):
        xs, ys = _ink(r)
        polys = [shapely.Polygon(i.points) for i in r.instances]
        dilated = shapely.union_all([p.buffer(0.5) for p in polys])  # pixel centres on the boundary count
        assert shapely.contains_xy(dilated, xs, ys).all()
        for inst, poly in zip(r.instances, polys, strict=True):
            inside = shapely.contains_xy(poly.buffer(0.5), xs, ys)
            assert inside.sum() >= 0.05 * poly.area  # every word is actually drawn in its polygon
            if not inst.ignore and len(inst.points) > 4:  # a curved word's ink reaches both of its ends
                k = len(inst.points) // 2
                ends = [inst.points[[0, 1, -2, -1]], inst.points[[k - 2, k - 1, k, k + 1]]]
                for end in ends:
                    assert shapely.contains_xy(shapely.Polygon(end).buffer(0.5), xs, ys).any()


def test_legible_words_contrast_with_their_background():
    for r in _rendered(None, 30)[:6]:
        xs, ys = _ink(r)
        for inst in r.instances:
            if inst.ignore or _short_side(inst.points) < 8:
                continue
            inside = shapely.contains_xy(shapely.Polygon(inst.points), xs, ys)
            px = r.image[ys[inside].astype(int), xs[inside].astype(int)].astype(float)  # (M, 3)
            bg = r.background[ys[inside].astype(int), xs[inside].astype(int)].astype(float)
            assert np.abs(px - bg).max(axis=1).max() >= 60  # the strongest ink pixel stands out


def test_layout_override_reaches_the_written_dataset(tmp_path: Path):
    """`write_dataset(layout=...)`: no tiny and no don't-care words, and a clutter-free background."""
    import dataclasses

    from tcm.geometry import rect_short_side

    clean = dataclasses.replace(synth.layout_for("icdar2015"), tiny_fraction=0.0, ignore_fraction=0.0, distractors=(0, 0))
    written = synth.write_dataset("icdar2015", tmp_path, n=12, seed=0, layout=clean)
    instances = [i for _, inst in written for i in inst]
    assert instances and not any(i.ignore for i in instances)
    assert min(rect_short_side(i.points) for i in instances) >= 8
    default = synth.write_dataset("icdar2015", tmp_path / "d", n=12, seed=0)
    assert any(i.ignore for _, inst in default for i in inst)  # the default layout has don't-care words
