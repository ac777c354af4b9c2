"""Synthetic words: real fonts and vocabulary, labels inside the protocol, byte-identical per seed."""

from __future__ import annotations

import filecmp
import string
from pathlib import Path

import cv2
import numpy as np
import pytest

from tcm.data import synth_words as sw
from tcm.data.formats import icdar2015_words, lmdb_words
from tcm.recognition.charset import CHARSET_94, preprocess_label


def test_fonts_are_matplotlibs_dejavu_and_stix_with_every_glyph():
    names = {Path(p).name for p in sw.font_paths()}
    assert {"DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf"} <= names
    assert not any("Display" in n or "NonUni" in n or "Siz" in n for n in names)  # no glyphs for ASCII


def test_labels_mix_vocabulary_numbers_punctuation_and_case_within_the_protocol():
    rng = np.random.default_rng(0)
    labels = [sw.random_text(rng) for _ in range(400)]
    vocab = set(sw.vocabulary())
    assert "the" in vocab and len(vocab) > 20_000
    for label in labels:
        assert 1 <= len(label) <= 25 and set(label) <= set(CHARSET_94)
        assert preprocess_label(label, CHARSET_94).label == label  # ingest keeps every synthetic label as is
    assert sum(label in vocab for label in labels) > 100  # plain vocabulary words
    assert sum(label.isupper() for label in labels) > 20 and sum(label.istitle() for label in labels) > 20
    assert sum(label.isdigit() for label in labels) > 5
    assert sum(any(c in string.punctuation for c in label) for label in labels) > 40


def test_render_draws_the_text_in_the_chosen_font():
    a = sw.render_text("Hello", sw.font_paths()[0], 40, pad=2)
    b = sw.render_text("Hello", [p for p in sw.font_paths() if "Serif" in p][0], 40, pad=2)
    assert a.dtype == np.uint8 and a.max() == 255 and a.shape[0] < a.shape[1]
    assert a.shape != b.shape or not np.array_equal(a, b)
    assert (a[:2] == 0).all() and (a[:, :2] == 0).all()  # the padding is blank


@pytest.mark.parametrize("fmt", ["icdar2015-words", "lmdb"])
def test_same_seed_same_bytes_other_seed_other_words(fmt, tmp_path):
    first = sw.write_dataset(fmt, tmp_path / "a", n=12, seed=5)
    again = sw.write_dataset(fmt, tmp_path / "b", n=12, seed=5)
    other = sw.write_dataset(fmt, tmp_path / "c", n=12, seed=6)
    assert first == again and first != other
    files = sorted(p.name for p in (tmp_path / "a" / "train").iterdir())
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a" / "train", tmp_path / "b" / "train", files, shallow=False)
    assert match == files and not mismatch and not errors
    if fmt == "lmdb":
        samples = list(lmdb_words.read_samples(tmp_path / "a" / "train"))
        assert [(i, label.decode()) for i, _, label in samples] == [(k, t) for k, (_, t) in enumerate(first, 1)]
        images = [image for _, image, _ in samples]
    else:
        labels = icdar2015_words.read_labels((tmp_path / "a" / "train" / "gt.txt").read_bytes(), "gt.txt")
        assert [(lb.name, lb.text) for lb in labels] == first
        images = [(tmp_path / "a" / "train" / name).read_bytes() for name, _ in first]
    decoded = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in images]
    assert all(img is not None and img.shape[2] == 3 and img.std() > 10 for img in decoded)  # ink on ground


def test_unknown_format_is_named(tmp_path):
    with pytest.raises(ValueError, match="'nope'"):
        sw.write_dataset("nope", tmp_path, n=1, seed=0)


def test_clean_style_is_lower_case_short_words_on_one_canvas_left_aligned(tmp_path):
    labels = sw.write_dataset("lmdb", tmp_path, n=120, seed=3, style="clean")
    assert labels == sw.write_dataset("lmdb", tmp_path / "again", n=120, seed=3, style="clean")
    texts = [t for _, t in labels]
    assert all(1 <= len(t) <= sw.CLEAN_MAX_LENGTH and set(t) <= set(string.ascii_lowercase + string.digits) for t in texts)
    assert sum(t.isdigit() for t in texts) >= 4 and sum(t in set(sw.clean_vocabulary()) for t in texts) > 90
    images = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for _, b, _ in lmdb_words.read_samples(tmp_path / "train")]
    assert len({img.shape for img in images}) == 1  # one canvas: the resize never stretches a word differently
    cell = (images[0].shape[1] - 4) / sw.CLEAN_MAX_LENGTH  # monospaced advance, 2 px pad either side
    for img, text in zip(images, texts, strict=True):
        ink = np.abs(img.astype(int) - img[0, 0].astype(int)).max(axis=(0, 2)) > 40  # (W,) columns with ink
        assert ink[: 2 + int(cell)].any()  # the first character sits in the first cell
        assert not ink[int(2 + len(text) * cell) + 2 :].any()  # nothing right of the word's last cell


def test_default_style_is_unchanged_by_the_clean_option(tmp_path):
    assert sw.write_dataset("lmdb", tmp_path / "a", n=6, seed=5) == sw.write_dataset(
        "lmdb", tmp_path / "b", n=6, seed=5, style="varied"
    )
    with pytest.raises(ValueError, match="'fancy'"):
        sw.write_dataset("lmdb", tmp_path / "c", n=1, seed=0, style="fancy")
