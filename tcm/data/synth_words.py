"""Synthetic word images for recognition (`tcm synth --task recognition`): our stand-in for MJSynth.

Words come from a real vocabulary (wordfreq's English list, shipped with the package: no network) mixed with
random alphanumerics, numbers, punctuation and case variants; every label lies in the 94-character training
charset and has at most 25 characters. Glyphs are drawn by Pillow's FreeType from the TrueType fonts that
matplotlib ships (DejaVu Sans / Serif / Sans Mono and STIX General, every weight and slant). The flat word
patch is then laid on a path (flat, rotated, perspective or curved) with the detection synthesiser's exact
warps (`tcm.data.synth`), so pixels and polygon come from one transform; colour, blur and noise follow.

`style="clean"` (`render_clean_word`) is the easy / CI set instead: lower-case words and numbers in one monospaced
font, flat, left-aligned on one canvas; the tiny CPU recipe (`jobs/configs/clip4str_tiny_cpu.yaml`) reads it.

Deterministic: sample k depends only on (seed, split, k) (`tcm.data.synth.image_rng`); the same seed gives
byte-identical files. `render_on_path` is the building block the crop-rectification acceptance test uses.
"""

from __future__ import annotations

import functools
import os
import string
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tcm.data.synth import Layout, _relative_shape, _strips_ok, _warp_quad, _warp_strips, image_rng
from tcm.recognition.charset import CHARSET_94, MAX_LABEL_LENGTH

PathKind = Literal["flat", "rotated", "perspective", "curved"]
PATH_KINDS: tuple[PathKind, ...] = ("flat", "rotated", "perspective", "curved")
PATH_WEIGHTS = (0.4, 0.2, 0.2, 0.2)  # mostly flat words, as in MJSynth; the rest spread over the distortions
FONT_FAMILIES = ("DejaVuSans", "DejaVuSerif", "STIXGeneral")  # DejaVuSans also matches DejaVuSansMono
VOCABULARY_SIZE = 30_000  # wordfreq's 30k most frequent English words: common words plus a long tail
CURVE_POINTS = 7  # points per long side of a curved word: 7 + 7 = 14, as CTW1500 stores them
WordFormat = Literal["icdar2015-words", "lmdb"]
WORD_FORMATS: tuple[str, ...] = ("icdar2015-words", "lmdb")
# "varied": the MJSynth stand-in above (the default). "clean": the easy / CI set a random-init tiny recogniser
# learns to read in CPU minutes: lower-case words and numbers in one font at one size, flat, dark on light
WordStyle = Literal["varied", "clean"]
WORD_STYLES: tuple[str, ...] = ("varied", "clean")
CLEAN_FONT = "DejaVuSansMono.ttf"  # one monospaced font: character k always starts k advances from the left
# px em: the canvas is 2 x 2 px + 8 advances of ~19 px wide, so after the 32x128 resize every character cell is
# ~15 px (two 8-px patch columns) wide and at the same place in every word
CLEAN_SIZE = 32
CLEAN_MAX_LENGTH = 8  # short words: 8 cells of ~15 px fill the 128-px-wide crop
CLEAN_NUMBERS = 0.1  # share of digit strings, so all 36 protocol characters occur


@functools.lru_cache(maxsize=1)
def font_paths() -> tuple[str, ...]:
    """The DejaVu and STIX TrueType files matplotlib ships that have a glyph for every charset character."""
    import matplotlib
    from matplotlib.ft2font import FT2Font

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    out = []
    for path in sorted(folder.glob("*.ttf")):
        if not path.name.startswith(FONT_FAMILIES):
            continue
        font = FT2Font(str(path))
        if all(font.get_char_index(ord(c)) for c in CHARSET_94):  # DejaVu*Display and STIX symbol sets fail
            out.append(str(path))
    if not out:
        raise RuntimeError(f"synth: no usable DejaVu/STIX TrueType font under {folder}")
    return tuple(out)


@functools.lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """wordfreq's English top list, restricted to words spelled in the training charset within 25 chars."""
    import wordfreq

    allowed = set(CHARSET_94)
    words = wordfreq.top_n_list("en", VOCABULARY_SIZE)
    return tuple(w for w in words if 0 < len(w) <= MAX_LABEL_LENGTH and set(w) <= allowed)


def _choice(rng: np.random.Generator, items) -> str:
    return items[int(rng.integers(0, len(items)))]


def _case_variant(rng: np.random.Generator, word: str) -> str:
    u = rng.random()
    return word.upper() if u < 0.2 else word.capitalize() if u < 0.5 else word


def random_text(rng: np.random.Generator) -> str:
    """One label: a vocabulary word in lower / Title / UPPER case (55 %), random alphanumerics (15 %), a number
    (10 %), a word with punctuation (15 %) or two words joined (5 %). Always 1..25 charset characters."""
    words = vocabulary()
    u = rng.random()
    if u < 0.55:
        text = _case_variant(rng, _choice(rng, words))
    elif u < 0.70:
        pool = _choice(rng, (string.ascii_letters + string.digits, string.ascii_uppercase + string.digits))
        text = "".join(_choice(rng, pool) for _ in range(int(rng.integers(2, 11))))
    elif u < 0.80:
        n = int(rng.integers(0, 10 ** int(rng.integers(1, 7))))
        form = int(rng.integers(0, 4))
        text = (str(n), f"{n / 100:.2f}", f"{n:,}", f"${n / 100:.2f}")[form]
    elif u < 0.95:
        word = _case_variant(rng, _choice(rng, words))
        before, after = _choice(rng, ("", "", "(", '"', "'", "#")), _choice(rng, (".", ",", "!", "?", ":", ")", "'s", "%"))
        text = before + word + after
    else:
        text = _case_variant(rng, _choice(rng, words)) + _choice(rng, ("-", "&", "/", "_")) + _choice(rng, words)
    return text[:MAX_LABEL_LENGTH]


def render_text(text: str, font_path: str, size: int, pad: int) -> np.ndarray:
    """(h, w) uint8 coverage of `text` in a TrueType font at `size` px, cropped to its ink, padded by `pad`."""
    font = ImageFont.truetype(font_path, size)
    left, top, right, bottom = font.getbbox(text)
    m = 2  # canvas margin against anti-aliasing beyond the reported box
    canvas = Image.new("L", (right - left + 2 * m, bottom - top + 2 * m), 0)
    ImageDraw.Draw(canvas).text((m - left, m - top), text, font=font, fill=255)
    ink = np.asarray(canvas)
    ys, xs = np.nonzero(ink)
    if len(ys) == 0:
        raise ValueError(f"synth: {text!r} draws no ink in {os.path.basename(font_path)}")
    return np.pad(ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], pad)


def lay_on_path(
    patch: np.ndarray, kind: PathKind, rng: np.random.Generator, margin: int
) -> tuple[np.ndarray, np.ndarray]:
    """The patch (h, w) warped onto a random path of `kind`: ((H, W) float32 coverage in [0, 1], polygon
    (2k, 2) clockwise from the word's top-left, in that canvas). Geometry as `tcm.data.synth` draws it:
    rotated up to 45 degrees, perspective with one end receding, curved along an arc or a sine (k = 7)."""
    h, w = patch.shape
    layout = Layout(kinds=PATH_KINDS, quantise="int", curve_points=(CURVE_POINTS,))  # type: ignore[arg-type]
    for _ in range(20):  # a curve too tight for a short word folds: draw another
        top, bottom = _relative_shape(rng, "straight" if kind == "flat" else kind, w, h, layout)
        if len(top) == 2 or _strips_ok(top, bottom):
            break
    else:
        top, bottom = _relative_shape(rng, "straight", w, h, layout)
    points = np.concatenate([top, bottom[::-1]])  # (2k, 2)
    offset = margin - points.min(0)
    top, bottom, points = top + offset, bottom + offset, points + offset
    W, H = (np.ceil(points.max(0)).astype(int) + 1 + margin).tolist()
    if len(top) == 2:
        alpha = _warp_quad(patch, np.array([*top, bottom[1], bottom[0]]), 0, 0, W, H)
    else:
        alpha = _warp_strips(patch, top, bottom, 0, 0, W, H)
    return alpha.astype(np.float32) / 255, points


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background and ink BGR colours whose lumas differ by at least 80 (legible, as in real signage)."""
    luma = np.array([0.114, 0.587, 0.299])  # BGR weights (ITU-R BT.601)
    bg = rng.uniform(0, 255, 3)
    for _ in range(50):
        fg = rng.uniform(0, 255, 3)
        if abs(float((fg - bg) @ luma)) >= 80:
            return bg, fg
    return bg, np.full(3, 0.0 if float(bg @ luma) > 127 else 255.0)


def compose(alpha: np.ndarray, bg: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: ink colour fg over a flat background bg by the coverage alpha (H, W)."""
    a = alpha[..., None]  # (H, W, 1)
    return np.rint(bg + (fg - bg) * a).astype(np.uint8)


def render_on_path(
    text: str,
    kind: PathKind,
    rng: np.random.Generator,
    *,
    font_path: str | None = None,
    size: int = 40,  # px em size: glyphs ~30 px tall, well above what recognisers resize to
    margin: int = 8,
    bg: tuple[float, float, float] = (235.0, 235.0, 235.0),
    fg: tuple[float, float, float] = (20.0, 20.0, 20.0),
) -> tuple[np.ndarray, np.ndarray]:
    """`text` rendered flat, rotated, in perspective or curved into a larger image: ((H, W, 3) uint8 BGR,
    the word's polygon (2k, 2) float64, clockwise from its top-left, vertices at pixel centres)."""
    patch = render_text(text, font_path or font_paths()[0], size, pad=max(2, size // 8))
    alpha, polygon = lay_on_path(patch, kind, rng, margin)
    return compose(alpha, np.asarray(bg, np.float64), np.asarray(fg, np.float64)), polygon


def render_word(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One random training word image (H, W, 3) uint8 BGR and its label (see the module docstring)."""
    text = random_text(rng)
    font = _choice(rng, font_paths())
    size = int(rng.integers(24, 56))
    patch = render_text(text, font, size, pad=int(rng.integers(1, max(2, size // 4))))
    kind: PathKind = PATH_KINDS[int(rng.choice(len(PATH_KINDS), p=PATH_WEIGHTS))]
    alpha, _ = lay_on_path(patch, kind, rng, margin=int(rng.integers(1, max(2, size // 4))))
    if rng.random() < 0.3:  # soft edges, as out-of-focus or low-resolution text
        alpha = cv2.GaussianBlur(alpha, (0, 0), rng.uniform(0.3, 1.2))
    bg, fg = _colours(rng)
    H, W = alpha.shape
    gradient = np.linspace(0, 1, W, dtype=np.float64)[None, :, None] * rng.uniform(-40, 40, 3)  # (1, W, 3)
    image = compose(alpha, bg + gradient, fg).astype(np.float32)  # (H, W, 3)
    image += rng.standard_normal((H, W, 3), dtype=np.float32) * np.float32(rng.uniform(0, 8))  # sensor grain
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), text


@functools.lru_cache(maxsize=1)
def clean_vocabulary() -> tuple[str, ...]:
    """The vocabulary's lower-case ASCII words of 1..CLEAN_MAX_LENGTH letters (the clean style's words)."""
    letters = set(string.ascii_lowercase)
    return tuple(w for w in vocabulary() if len(w) <= CLEAN_MAX_LENGTH and set(w) <= letters)


def clean_text(rng: np.random.Generator) -> str:
    """One clean-style label: a lower-case vocabulary word, or (CLEAN_NUMBERS of them) 1..6 random digits."""
    if rng.random() < CLEAN_NUMBERS:
        return "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(1, 7))))
    return _choice(rng, clean_vocabulary())


def render_clean_word(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One clean-style word image (H, W, 3) uint8 BGR and its label: DejaVu Sans Mono at CLEAN_SIZE, flat, no
    blur or noise, left-aligned on one fixed-size canvas (room for CLEAN_MAX_LENGTH characters, the baseline at
    one height); grey ink (0..80) on a grey ground (180..255) so the network does not key on one exact colour."""
    text = clean_text(rng)
    font = ImageFont.truetype(next(p for p in font_paths() if os.path.basename(p) == CLEAN_FONT), CLEAN_SIZE)
    ascent, descent = font.getmetrics()
    pad = 2  # px around the cells
    W = 2 * pad + round(font.getlength("0" * CLEAN_MAX_LENGTH))  # CLEAN_MAX_LENGTH monospaced advances
    canvas = Image.new("L", (W, 2 * pad + ascent + descent), 0)
    ImageDraw.Draw(canvas).text((pad, pad), text, font=font, fill=255)  # top-left anchor: fixed baseline
    alpha = np.asarray(canvas, np.float32) / 255  # (h, w) coverage
    bg, fg = np.full(3, rng.uniform(180, 255)), np.full(3, rng.uniform(0, 80))
    return compose(alpha, bg, fg), text


def encode_png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("synth: cv2.imencode failed for a PNG word image")
    return data.tobytes()


def write_dataset(
    fmt: str, out_dir: str | Path, n: int, seed: int, split: str = "train", style: str = "varied"
) -> list[tuple[str, str]]:
    """Write n word images with labels to out_dir/<split>/ in `fmt`: "icdar2015-words" (word_<k>.png +
    gt.txt) or "lmdb" (data.mdb), in `style` ("varied" or "clean", see WORD_STYLES). Returns (name, label) per
    word; word k depends only on (seed, split, style, k)."""
    from tcm.data.formats import icdar2015_words, lmdb_words

    if fmt not in WORD_FORMATS:
        raise ValueError(f"synth: unknown recognition format {fmt!r}; expected {', '.join(WORD_FORMATS)}")
    if style not in WORD_STYLES:
        raise ValueError(f"synth: unknown word style {style!r}; expected {', '.join(WORD_STYLES)}")
    render = render_clean_word if style == "clean" else render_word
    samples = []
    for k in range(1, n + 1):
        image, text = render(image_rng(seed, split, k))
        samples.append((f"word_{k}.png", encode_png(image), text))
    folder = Path(out_dir) / split
    match fmt:
        case "icdar2015-words":
            icdar2015_words.write_folder(folder, samples)
        case "lmdb":
            lmdb_words.write_lmdb(folder, [(data, text) for _, data, text in samples])
    return [(name, text) for name, _, text in samples]
