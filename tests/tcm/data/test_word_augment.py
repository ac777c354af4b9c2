"""Word RandAugment: CLIP4STR's op pool and levels through timm, deterministic per seed, and it does augment."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from tcm.data import synth_words as sw
from tcm.data.word_augment import WordAugmentConfig, augment_word, rand_augment, seeded, to_model_input


@pytest.fixture(scope="module")
def word() -> Image.Image:
    image, _ = sw.render_word(np.random.default_rng(3))
    return Image.fromarray(np.ascontiguousarray(image[..., ::-1]))  # BGR -> RGB


def test_pool_is_timms_increasing_set_minus_sharpness_plus_blur_and_noise():
    ra = rand_augment()
    names = [op.name for op in ra.ops]
    assert len(names) == 16 and "SharpnessIncreasing" not in names
    assert {"Rotate", "ShearX", "TranslateYRel", "GaussianBlur", "PoissonNoise", "SolarizeAdd"} <= set(names)
    assert ra.num_layers == 3 and ra.choice_weights is not None  # weights: timm picks without replacement
    assert all(op.prob == 0.5 and op.magnitude == 5 for op in ra.ops)


def test_levels_at_magnitude_5_are_half_the_hparams():
    ops = {op.name: op for op in rand_augment().ops}
    with seeded(0):
        for name, full in (("Rotate", 30), ("ShearX", 0.9), ("ShearY", 0.2), ("TranslateXRel", 0.1), ("TranslateYRel", 0.3)):
            values = [ops[name].level_fn(5, {})[0] for _ in range(20)]
            assert [abs(v) for v in values] == pytest.approx([full / 2] * 20)
            assert min(values) < 0 < max(values)  # randomly negated
        assert ops["GaussianBlur"].level_fn(5, {}) == (2.0,) and ops["PoissonNoise"].level_fn(5, {}) == (20.0,)


def test_same_seed_same_pixels_and_global_generators_untouched(word):
    ra = rand_augment()
    random.seed(123)
    before = random.random()
    random.seed(123)
    a, b = augment_word(word, 7, ra), augment_word(word, 7, ra)
    assert random.random() == before  # the caller's stream is restored
    assert a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))
    outs = [np.asarray(augment_word(word, s, ra)) for s in range(12)]
    distinct = {o.tobytes() for o in outs}
    assert len(distinct) >= 10  # different seeds, different augmentations
    same_as_input = sum(o.shape == np.asarray(word).shape and np.array_equal(o, np.asarray(word)) for o in outs)
    assert same_as_input <= 2  # P(no op applied) = 0.5^3 = 1/8


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "GaussianBlur", "PoissonNoise", "Invert", "TranslateYRel"])
def test_every_op_changes_the_image(word, name):
    op = next(o for o in rand_augment().ops if o.name == name)
    op.prob = 1.0
    with seeded(0):
        out = op(word)
    if name == "Rotate":  # expand=True: the canvas grows to hold the turned word
        assert out.size[0] > word.size[0] and out.size[1] > word.size[1]
    else:
        assert out.size == word.size
        diff = np.abs(np.asarray(out, np.int16) - np.asarray(word, np.int16)).mean()
        assert diff > 1.0, diff


def test_model_input_is_resized_and_normalised(word):
    cfg = WordAugmentConfig(image_size=(32, 128))
    x = to_model_input(word, cfg)
    assert x.shape == (3, 32, 128) and x.dtype == np.float32
    white = to_model_input(Image.new("RGB", (10, 10), (255, 255, 255)), cfg)
    np.testing.assert_allclose(white[:, 0, 0], (1 - np.array(cfg.mean)) / np.array(cfg.std), rtol=1e-5)
