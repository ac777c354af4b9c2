"""tcm.evaluation_str: NED, word accuracy and the sample-weighted combined row."""

from __future__ import annotations

import pytest

from tcm.evaluation_str import combined, format_table, normalized_edit_distance, results_table, score_words


def test_ned_uses_the_longer_string() -> None:
    assert normalized_edit_distance("kitten", "sitting") == pytest.approx(3 / 7)
    assert normalized_edit_distance("", "abc") == 1.0 and normalized_edit_distance("", "") == 0.0


def test_combined_row_is_sample_weighted() -> None:
    a = score_words(
        [("1", "abc"), ("2", "de"), ("3", "fgh"), ("4", "ij")], {"1": "abc", "2": "xx"}, dataset="A"
    )
    b = score_words([("1", "Word")], {"1": "WORD"}, dataset="B")  # 36 chars: case folded, right
    # A: 1 of 4 right; NED 0, 1, 1 (no line), 1 -> 1 - NED = 1/4. B: 1 of 1, 1 - NED = 1.
    assert (a.n, a.accuracy, a.one_minus_ned) == (4, 0.25, 0.25)
    assert (b.n, b.accuracy) == (1, 1.0)
    row = combined([a, b])
    # weighted by words: (4 x 0.25 + 1 x 1) / 5 = 0.4 (a plain mean of the two rows would say 0.625)
    assert (row.dataset, row.n) == ("combined", 5)
    assert row.accuracy == pytest.approx(0.4) and row.one_minus_ned == pytest.approx(0.4)
    rows = results_table([a, b])
    assert [r.dataset for r in rows] == ["A", "B", "combined"]
    assert "| combined | 5 | 40.00 | 40.00 |" in format_table(rows)
    assert combined([]).n == 0
