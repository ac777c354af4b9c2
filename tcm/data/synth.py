"""Synthetic scene-text images with exact polygons: our stand-in for SynthText (tests, demo, benchmarks).

Every word is rendered into its own patch (ink + padding), the patch is warped into the image and the polygon
is the warped patch box, so polygon and pixels come from one transform. Polygons are quantised *before* the
warp to what the target format stores (integers, or TD500's rotated rectangle), and the warp is then built from
the quantised polygon: a reader gives back exactly what `write_dataset` returned, and the ink still lies inside.

Quads (straight, rotated, perspective) are warped by one homography. Curved words (and every CTW1500 word, which
always has 14 points) are warped strip by strip: the word box is cut into k-1 vertical strips and each strip is
mapped bilinearly onto the quad between two consecutive top points and the matching bottom points (edges stay
straight, neighbouring strips agree on their shared edge), inverted in closed form for `cv2.remap`.
"""

from __future__ import annotations

import math
import string
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import shapely

from tcm.data.formats import get_format
from tcm.data.formats.td500 import rect_corners
from tcm.types import Instance

Kind = Literal["straight", "rotated", "perspective", "curved"]
Quantise = Literal["int", "rbox"]

FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_COMPLEX_SMALL,
    cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
    cv2.FONT_HERSHEY_PLAIN,
)
ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Layout:
    """What geometry one annotation format can store, hence what the generator may produce for it."""

    kinds: tuple[Kind, ...]  # instance kinds drawn uniformly
    quantise: Quantise  # "int": integer vertices; "rbox": TD500 rectangle (integer x, y, w, h; float theta)
    curve_points: tuple[int, ...] = (7,)  # points per long side of a curved word: 7 + 7 = 14 (CTW1500)
    quad_points: int = 2  # points per long side of a quad word: 2 (4-point quad); CTW1500 stores 7 always
    ignore_text: str | None = "###"  # transcription of a don't-care word; None: the format has no don't-care
    has_text: bool = True  # False: the format stores no transcription (TD500) -> text ""
    ignore_fraction: float = 0.1  # share of don't-care words (blurred, low contrast)
    tiny_fraction: float = 0.1  # share of words whose short side is < 8 px (DB's min_text_size)
    distractors: tuple[int, int] = (3, 11)  # shapes and lines drawn under the words, inclusive range per image
    key_format: str = "{k}"  # image key of the k-th image (1-based), as the dataset numbers its images


ALL_KINDS: tuple[Kind, ...] = ("straight", "rotated", "perspective", "curved")
DEFAULT_LAYOUT = Layout(kinds=ALL_KINDS, quantise="int")  # any geometry, integer vertices


def layout_for(fmt: str) -> Layout:
    """The geometry a dataset format can hold (names as `tcm.data.formats.get_format`)."""
    match fmt:
        case "icdar2013":  # xmin ymin xmax ymax: axis-aligned boxes only
            return Layout(kinds=("straight",), quantise="int", ignore_text=None)
        case "icdar2015" | "mlt17":  # 8 integers: quads only
            return Layout(kinds=("straight", "rotated", "perspective"), quantise="int")
        case "td500":  # x y w h theta: rotated rectangles only, no transcription
            return Layout(
                kinds=("straight", "rotated"), quantise="rbox", has_text=False, key_format="IMG_{k:04d}"
            )
        case "ctw1500":  # always 14 points
            return Layout(kinds=ALL_KINDS, quantise="int", quad_points=7)
        case "totaltext":  # any number of points; don't-care is "#"
            return Layout(kinds=ALL_KINDS, quantise="int", curve_points=(4, 5, 6, 7), ignore_text="#")
        case _:
            raise ValueError(
                f"synth: unknown format {fmt!r}; expected icdar2013, icdar2015, td500, ctw1500, totaltext, mlt17"
            )


@dataclass
class Rendered:
    """One synthetic image, the same image before any word was drawn, and its instances."""

    image: np.ndarray  # (H, W, 3) uint8 BGR
    background: np.ndarray  # (H, W, 3) uint8 BGR, no words (lets tests find the ink)
    instances: list[Instance]


# ---------------------------------------------------------------------------------------------- background


def _background(rng: np.random.Generator, height: int, width: int, distractors: tuple[int, int]) -> np.ndarray:
    """Gradient + blotchy low-frequency texture + `distractors` (lo, hi) random shapes and lines + pixel noise."""
    H, W = height, width
    G = 8  # low-resolution grid of the smooth part (gradient + blotches), upsampled once: cheap at any size
    c0, c1 = rng.uniform(0, 255, (2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    g = np.linspace(0, 1, G)
    t = g[None, :] * math.cos(angle) * W + g[:, None] * math.sin(angle) * H  # (G, G) along the gradient
    t = (t - t.min()) / max(float(np.ptp(t)), 1.0)  # (G, G) in [0, 1]
    smooth = c0 + (c1 - c0) * t[..., None] + rng.normal(0, rng.uniform(5, 30), (G, G, 3))  # (G, G, 3)
    smooth = np.clip(smooth, 0, 255).astype(np.uint8)
    img = cv2.resize(smooth, (W, H), interpolation=cv2.INTER_LINEAR)  # (H, W, 3)
    for _ in range(int(rng.integers(distractors[0], distractors[1] + 1))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        p = rng.integers(0, [W, H], (2, 2))  # two random points
        match int(rng.integers(0, 4)):
            case 0:
                cv2.rectangle(img, p[0].tolist(), p[1].tolist(), colour, int(rng.choice([-1, 1, 2, 3])))
            case 1:
                radius = int(rng.integers(4, max(H, W) // 3))
                cv2.circle(img, p[0].tolist(), radius, colour, int(rng.choice([-1, 1, 2])), cv2.LINE_AA)
            case 2:
                cv2.line(img, p[0].tolist(), p[1].tolist(), colour, int(rng.integers(1, 4)), cv2.LINE_AA)
            case _:
                pts = rng.integers(0, [W, H], (int(rng.integers(3, 6)), 2)).astype(np.int32)  # (P, 2)
                cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.0))
    noise = rng.standard_normal((H, W, 3), dtype=np.float32) * rng.uniform(1, 8)  # (H, W, 3) grain
    return cv2.add(img, noise, dtype=cv2.CV_8U)  # saturating


# ----------------------------------------------------------------------------------------------------- words


def _random_text(rng: np.random.Generator, lo: int, hi: int, caps: bool = False) -> str:
    n = int(rng.integers(lo, hi + 1))
    match int(rng.integers(0, 5)) if not caps else 1:
        case 0:
            chars = string.ascii_lowercase
        case 1:
            chars = string.ascii_uppercase + string.digits
        case 2:
            chars = string.digits
        case _:
            chars = ALPHABET
    text = "".join(chars[i] for i in rng.integers(0, len(chars), n))
    return text.capitalize() if rng.random() < 0.3 else text


def _word_patch(rng: np.random.Generator, text: str, ink_height: float, pad: int) -> np.ndarray:
    """(h, w) uint8 alpha of `text` cropped to its ink and padded by `pad` zero pixels on every side."""
    font = int(FONTS[int(rng.integers(0, len(FONTS)))])
    if rng.random() < 0.15:
        font |= cv2.FONT_ITALIC
    (_, th), base = cv2.getTextSize(text, font, 1.0, 1)
    scale = ink_height / max(th + base, 1)
    thickness = max(1, int(round(scale * rng.uniform(0.8, 2.5))))  # bolder at larger scales, like real signs
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    m = 2 * thickness + 4  # canvas margin: Hershey strokes overshoot the reported box
    canvas = np.zeros((th + base + 2 * m, tw + 2 * m), np.uint8)  # (h, w)
    cv2.putText(canvas, text, (m, m + th), font, scale, 255, thickness, cv2.LINE_AA)
    ys, xs = np.nonzero(canvas)
    ink = canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return np.pad(ink, pad)


def _pick_colour(rng: np.random.Generator, under: np.ndarray, lo: float, hi: float, near: bool) -> np.ndarray:
    """A BGR colour whose luma differs from the mean luma of `under` by lo..hi; `near`: a tint of that mean."""
    luma = np.array([0.114, 0.587, 0.299])  # BGR weights (ITU-R BT.601)
    mean = under.reshape(-1, 3).mean(0)  # (3,) mean BGR under the word
    bg = float(mean @ luma)
    for _ in range(20):
        colour = np.clip(mean + rng.uniform(-hi, hi, 3), 0, 255) if near else rng.uniform(0, 255, 3)
        if lo <= abs(float(colour @ luma) - bg) <= hi:
            return colour
    sign = -1.0 if bg > 127 else 1.0  # fall back to a grey on the far side of the background
    return np.full(3, float(np.clip(bg + sign * (lo + hi) / 2, 0, 255)))


# -------------------------------------------------------------------------------------------------- geometry


def _edges(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Polygon (2k, 2): top edge left to right, then bottom edge right to left = clockwise from top-left."""
    return np.concatenate([top, bottom[::-1]], axis=0)


def _resample(top: np.ndarray, bottom: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k points evenly along each straight side of a quad (top (2, 2), bottom (2, 2))."""
    a = np.linspace(0, 1, k)[:, None]  # (k, 1)
    return top[0] + a * (top[1] - top[0]), bottom[0] + a * (bottom[1] - bottom[0])  # (k, 2) each


def _relative_shape(
    rng: np.random.Generator, kind: Kind, w: int, h: int, layout: Layout
) -> tuple[np.ndarray, np.ndarray]:
    """Top and bottom points (k, 2) of a word box of w x h pixels (pixel centres 0..w-1), centred on 0."""
    L, T = w - 1, h - 1  # box length and thickness between pixel centres
    top = np.array([[-L / 2, -T / 2], [L / 2, -T / 2]])  # (2, 2)
    bottom = np.array([[-L / 2, T / 2], [L / 2, T / 2]])  # (2, 2)
    match kind:
        case "straight":
            angle = 0.0
        case "rotated":
            angle = rng.uniform(-math.pi / 4, math.pi / 4)
        case "perspective":
            angle = rng.uniform(-math.pi / 6, math.pi / 6)
            side = int(rng.integers(0, 2))  # which end recedes
            shrink = rng.uniform(0.55, 0.9)
            top[side, 1] *= shrink
            bottom[side, 1] *= shrink
            shear = rng.uniform(-0.35, 0.35) * T
            top[:, 0] += shear
            bottom[:, 0] -= shear
            top += rng.normal(0, 0.04 * T, (2, 2))
            bottom += rng.normal(0, 0.04 * T, (2, 2))
        case "curved":
            return _curve(rng, L, T, int(rng.choice(layout.curve_points)))
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, s], [-s, c]])  # row vectors @ rot = rotation by `angle` (y down: clockwise on screen)
    return top @ rot, bottom @ rot


def _curve(rng: np.random.Generator, L: float, T: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k points on each side of a word of length L and thickness T bent along an arc or a sine."""
    s = np.linspace(-L / 2, L / 2, k)  # (k,) position along the word
    if rng.random() < 0.6:  # circular arc of total bend `bend`; radius > thickness: the sides never fold
        # at most 100 degrees, so with the +-30 degree turn below the ends stay within 80 degrees of upright
        bend = rng.uniform(0.6, min(1.75, 0.9 * L / max(T, 1))) * rng.choice([-1, 1])
        kappa = bend / L
        psi = kappa * s  # (k,) tangent angle
        centre = np.stack([np.sin(psi) / kappa, (1 - np.cos(psi)) / kappa], axis=1)  # (k, 2)
    else:  # sine wave
        wavelength = rng.uniform(0.8, 2.0) * L
        w = 2 * math.pi / wavelength
        # peak curvature amp * w^2 stays below 1 / T: the inner side never folds
        amp = min(rng.uniform(0.08, 0.2) * L, 0.8 / (max(T, 1) * w * w))
        phase = rng.uniform(0, 2 * math.pi)
        centre = np.stack([s, amp * np.sin(w * s + phase)], axis=1)  # (k, 2)
        psi = np.arctan(amp * w * np.cos(w * s + phase))  # (k,)
    normal = np.stack([-np.sin(psi), np.cos(psi)], axis=1)  # (k, 2) towards the bottom of the glyphs
    top, bottom = centre - normal * T / 2, centre + normal * T / 2
    a = rng.uniform(-math.pi / 6, math.pi / 6)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    mid = centre.mean(0)
    return (top - mid) @ rot, (bottom - mid) @ rot


def _strips_ok(top: np.ndarray, bottom: np.ndarray) -> bool:
    """Every strip quad (top[i], top[i+1], bottom[i+1], bottom[i]) is strictly convex and clockwise."""
    q = np.stack([top[:-1], top[1:], bottom[1:], bottom[:-1]], axis=1)  # (k-1, 4, 2)
    d = np.roll(q, -1, axis=1) - q  # (k-1, 4, 2) edge vectors
    dn = np.roll(d, -1, axis=1)  # (k-1, 4, 2) next edge
    return bool((d[..., 0] * dn[..., 1] - d[..., 1] * dn[..., 0] > 1e-6).all())


def _place(
    rng: np.random.Generator, kind: Kind, w: int, h: int, layout: Layout, height: int, width: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Quantised top and bottom points (k, 2) of a word box placed at random inside the image, or None."""
    if layout.quantise == "rbox":  # TD500: integer (x, y, w, h), any theta (the writer stores its repr)
        theta = 0.0 if kind == "straight" else rng.uniform(-math.pi / 4, math.pi / 4)
        rel = rect_corners(0, 0, w - 1, h - 1, theta)  # (4, 2)
        lo, hi = np.ceil(-rel.min(0)), np.floor(np.array([width - 1, height - 1]) - rel.max(0))
        if (hi < lo).any():
            return None
        x, y = (int(rng.integers(int(a), int(b) + 1)) for a, b in zip(lo, hi, strict=True))
        quad = rect_corners(x, y, w - 1, h - 1, theta)  # (4, 2) clockwise from top-left
        return quad[:2], quad[[3, 2]]
    top, bottom = _relative_shape(rng, kind, w, h, layout)
    if kind != "curved" and layout.quad_points > 2:
        top, bottom = _resample(top, bottom, layout.quad_points)
    top, bottom = np.rint(top), np.rint(bottom)  # "int": the format stores integers
    pts = np.concatenate([top, bottom])  # (2k, 2)
    lo, hi = -pts.min(0), np.array([width - 1, height - 1]) - pts.max(0)
    if (hi < lo).any() or not _strips_ok(top, bottom):
        return None
    offset = np.array([rng.integers(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True)], np.float64)
    return top + offset, bottom + offset


# ----------------------------------------------------------------------------------------------------- warps


def _cross(ux, uy, vx, vy):
    """z of the 2-D cross product (u x v), elementwise."""
    return ux * vy - uy * vx


def _warp_quad(patch: np.ndarray, quad: np.ndarray, x0: int, y0: int, bw: int, bh: int) -> np.ndarray:
    """Patch (h, w) warped by the homography taking its pixel-centre box onto quad (4, 2) -> (bh, bw)."""
    h, w = patch.shape
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    dst = (quad - [x0, y0]).astype(np.float32)
    M = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(patch, M, (bw, bh), flags=cv2.INTER_LINEAR, borderValue=0)


def _warp_strips(
    patch: np.ndarray, top: np.ndarray, bottom: np.ndarray, x0: int, y0: int, bw: int, bh: int
) -> np.ndarray:
    """Patch (h, w) cut into k-1 vertical strips, each mapped bilinearly onto its quad of the polygon."""
    h, w = patch.shape
    k = len(top)
    map_x = np.full((bh, bw), -10.0, np.float32)  # outside every strip: samples the zero border
    map_y = np.full((bh, bw), -10.0, np.float32)
    du = (w - 1) / (k - 1)
    for i in range(k - 1):
        # P(s, t) = a + s e + t f + s t g over the strip (a, b, c, d) = (top i, top i+1, bottom i+1, bottom i)
        a, b, c, d = top[i], top[i + 1], bottom[i + 1], bottom[i]
        quad = np.array([a, b, c, d])  # (4, 2)
        qx0, qy0 = np.floor(quad.min(0)).astype(int) - [x0, y0]
        qx1, qy1 = np.ceil(quad.max(0)).astype(int) + 1 - [x0, y0]
        px = np.arange(qx0, qx1, dtype=np.float64)[None, :] + x0  # (1, qw) image x of the strip's pixels
        py = np.arange(qy0, qy1, dtype=np.float64)[:, None] + y0  # (qh, 1)
        e, f, g = b - a, d - a, a - b + c - d
        hx, hy = px - a[0], py - a[1]  # (1, qw), (qh, 1)
        k2 = _cross(g[0], g[1], f[0], f[1])
        k1 = _cross(e[0], e[1], f[0], f[1]) + _cross(hx, hy, g[0], g[1])  # (qh, qw)
        k0 = _cross(hx, hy, e[0], e[1])  # (qh, qw)
        if abs(k2) < 1e-9:  # opposite sides parallel: linear in t
            t = -k0 / np.where(np.abs(k1) < 1e-12, 1e-12, k1)
        else:
            disc = np.sqrt(np.maximum(k1 * k1 - 4 * k0 * k2, 0.0))
            t1, t2 = (-k1 - disc) / (2 * k2), (-k1 + disc) / (2 * k2)
            t = np.where((t1 >= -1e-9) & (t1 <= 1 + 1e-9), t1, t2)  # (qh, qw)
        ex, ey = e[0] + g[0] * t, e[1] + g[1] * t  # (qh, qw) the s-direction at this t
        sx, sy = hx - f[0] * t, hy - f[1] * t
        s = (sx * ex + sy * ey) / np.maximum(ex * ex + ey * ey, 1e-12)  # (qh, qw)
        inside = (s >= -1e-9) & (s <= 1 + 1e-9) & (t >= -1e-9) & (t <= 1 + 1e-9)
        mx, my = map_x[qy0:qy1, qx0:qx1], map_y[qy0:qy1, qx0:qx1]  # views into the maps
        mx[inside] = (i + s[inside]) * du
        my[inside] = t[inside] * (h - 1)
    return cv2.remap(patch, map_x, map_y, cv2.INTER_LINEAR, borderValue=0)


# ---------------------------------------------------------------------------------------------------- render


def render_layers(
    rng: np.random.Generator,
    height: int = 256,  # small and fast: 100 images in well under 5 s on one core
    width: int = 256,
    layout: Layout = DEFAULT_LAYOUT,
    max_words: int = 12,  # upper bound of words tried per image; placement may reject some
) -> Rendered:
    """Background, image and exact instances. See `render_image`."""
    H, W = height, width
    background = _background(rng, H, W, layout.distractors)
    img = background.copy()  # (H, W, 3) uint8; words never overlap, so each is blended once
    placed: list[shapely.Polygon] = []
    instances: list[Instance] = []
    scale = min(H, W) / 256  # word sizes are tuned at 256 x 256
    for _ in range(int(rng.integers(max(1, max_words // 2), max_words + 1))):
        ignore = layout.ignore_text is not None and rng.random() < layout.ignore_fraction
        tiny = not ignore and rng.random() < layout.tiny_fraction
        kind: Kind = "straight" if tiny else layout.kinds[int(rng.integers(0, len(layout.kinds)))]
        if tiny:  # short side < 8 px: ink 3..5 px, 1 px padding
            text = _random_text(rng, 3, 8, caps=True)
            patch = _word_patch(rng, text, rng.uniform(3, 5), pad=1)
        else:
            text = _random_text(rng, 5 if kind == "curved" else 3, 10)
            ink = math.exp(rng.uniform(math.log(9), math.log(30))) * scale  # most boxes 12-40 px tall
            patch = _word_patch(rng, text, ink, pad=max(3, int(round(ink * rng.uniform(0.1, 0.25)))))
        if ignore:  # don't care: smeared (the padding of >= 3 px holds the blur)
            patch = cv2.GaussianBlur(patch, (5, 5), 0)
        h, w = patch.shape
        if tiny and h - 1 >= 8:
            continue
        for _attempt in range(10):
            sides = _place(rng, kind, w, h, layout, H, W)
            if sides is None:
                continue
            top, bottom = sides
            points = _edges(top, bottom)  # (2k, 2)
            poly = shapely.Polygon(points)
            if not poly.is_valid or poly.area <= 0:
                continue
            if placed and shapely.intersects(np.array(placed), poly.buffer(2.0)).any():
                continue
            x0, y0 = np.floor(points.min(0)).astype(int)
            x1, y1 = np.ceil(points.max(0)).astype(int) + 1
            if len(top) == 2:
                alpha = _warp_quad(patch, np.array([*top, bottom[1], bottom[0]]), x0, y0, x1 - x0, y1 - y0)
            else:
                alpha = _warp_strips(patch, top, bottom, x0, y0, x1 - x0, y1 - y0)
            region = img[y0:y1, x0:x1].astype(np.float32)  # (bh, bw, 3)
            lo, hi = (25.0, 50.0) if ignore else (90.0, 255.0)  # don't care is faint; the rest legible
            colour = _pick_colour(rng, region, lo, hi, near=ignore)
            a = alpha[..., None].astype(np.float32) / 255  # (bh, bw, 1)
            img[y0:y1, x0:x1] = np.rint(region + (colour - region) * a).astype(np.uint8)  # a = 0: unchanged
            placed.append(poly)
            label = "" if not layout.has_text else (layout.ignore_text or "") if ignore else text
            instances.append(Instance(points=points.astype(np.float64), text=label, ignore=ignore))
            break
    return Rendered(image=img, background=background, instances=instances)


def render_image(
    rng: np.random.Generator,
    height: int = 256,  # small and fast: 100 images in well under 5 s on one core
    width: int = 256,
    layout: Layout = DEFAULT_LAYOUT,
    max_words: int = 12,  # upper bound of words tried per image; placement may reject some
) -> tuple[np.ndarray, list[Instance]]:
    """One synthetic scene-text image (H, W, 3) uint8 BGR and its instances.

    Polygons are clockwise from the word's top-left, inside the image, valid and pairwise disjoint, quantised
    as `layout` says; words are random letters/digits in Hershey fonts, straight, rotated (up to 45 degrees),
    perspective or curved; some are tiny (short side < 8 px) and some don't-care (`layout.ignore_text`).
    """
    r = render_layers(rng, height, width, layout, max_words)
    return r.image, r.instances


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: independent of n, different per split (crc32: stable across processes)."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def write_dataset(
    fmt: str,
    out_dir: str | Path,
    n: int,
    seed: int,
    split: str = "train",
    height: int = 256,  # small and fast default; real datasets are 720p and up
    width: int = 256,
    layout: Layout | None = None,  # None: everything the format can store (`layout_for(fmt)`)
) -> list[tuple[str, list[Instance]]]:
    """Write n images (JPEG q95) and annotations in format `fmt` to out_dir/<split>/{images,annotations}/.

    File names follow the dataset's own naming (`get_format(fmt).image_name` / `annotation_name`); image k
    (1-based) depends only on (seed, split, k). Returns (image file name, instances as written) per image.
    """
    form = get_format(fmt)
    layout = layout or layout_for(fmt)
    images = Path(out_dir) / split / "images"
    annotations = Path(out_dir) / split / "annotations"
    images.mkdir(parents=True, exist_ok=True)
    annotations.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, list[Instance]]] = []
    for k in range(1, n + 1):
        image, instances = render_image(image_rng(seed, split, k), height, width, layout)
        name = form.image_name(layout.key_format.format(k=k), ".jpg")
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise RuntimeError(f"synth: cv2.imencode failed for {images / name}")
        (images / name).write_bytes(data.tobytes())
        (annotations / form.annotation_name(name)).write_bytes(form.write(instances))
        written.append((name, instances))
    return written
