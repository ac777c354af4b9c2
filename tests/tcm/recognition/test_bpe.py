"""The torch-free CLIP BPE (`tcm.recognition.bpe`) gives open_clip's `tokenize` ids, id for id."""

from __future__ import annotations

import string

import numpy as np
import pytest
from open_clip.tokenizer import tokenize

from tcm.recognition.bpe import ClipBPE, clip_bpe


def random_words(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    alphabet = list(string.ascii_lowercase + string.digits)
    return ["".join(rng.choice(alphabet, size=int(rng.integers(0, 12)))) for _ in range(n)]


@pytest.mark.parametrize("context", [16, 77])
def test_ids_equal_open_clip_on_predicted_captions(context):
    """Lowercase alphanumerics of every length 0..11 (the recogniser's captions), common words (long merges) and
    strings past the context (cut, EOT last)."""
    captions = random_words(300, seed=0) + ["the", "restaurant", "parking", "stop", "hello", "1984", "", "a"]
    captions += ["x" * 40, "internationalisation" * 3, "0123456789" * 3]
    expected = tokenize(captions, context_length=context).numpy()
    got = clip_bpe()(captions, context)
    assert got.dtype == np.int64 and got.shape == (len(captions), context)
    np.testing.assert_array_equal(got, expected)


def test_ids_equal_open_clip_on_general_text():
    """Any cross charset: upper case, punctuation, contractions, HTML entities, non-ASCII bytes, spaces."""
    captions = ["Hello, World!", "don't STOP", "caf\u00e9 &amp; bar", "  two   spaces ", "\u00fcber-stra\u00dfe", "\u4e2d\u6587", "it's 5:30pm"]
    np.testing.assert_array_equal(ClipBPE()(captions, 24), tokenize(captions, context_length=24).numpy())
