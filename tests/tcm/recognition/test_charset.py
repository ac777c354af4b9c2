"""Label preprocessing in the released order (clip4str.md §6)."""

from tcm.recognition.charset import CHARSET_36, CHARSET_62, CHARSET_94, CharsetAdapter, preprocess_label


def test_training_charset_order_fixes_token_ids():
    assert len(CHARSET_94) == 94 and CHARSET_94[:11] == "0123456789a" and CHARSET_94[36] == "A"
    assert CHARSET_94[62:] == "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def test_adapter_lowercases_for_a_lowercase_charset_and_drops_the_rest():
    assert CharsetAdapter(CHARSET_36)("Café-Noir!") == "cafnoir"
    assert CharsetAdapter(CHARSET_62)("Café-Noir!") == "CafNoir"
    assert CharsetAdapter("ABC")("abcd") == "ABC"


def test_length_is_checked_before_the_charset_filter():
    # 26 characters, 13 of them punctuation: the released order drops it although the 36-char label is 13 long
    long_label = "ab-" * 8 + "cd"
    assert len(long_label) == 26
    assert preprocess_label(long_label, CHARSET_36).label is None
    assert "longer than 25" in preprocess_label(long_label, CHARSET_36).reason


def test_whitespace_and_unicode_are_folded_first():
    assert preprocess_label("ﬁ re ﬂy", CHARSET_36).label == "firefly"  # NFKD ligatures, spaces removed
    assert preprocess_label("Éte\u0301", CHARSET_94).label == "Ete"
    assert preprocess_label("!!!", CHARSET_36).reason == "empty after the charset adapter"
