"""`tcm score --protocol recognition`: hand-made task 4.3 files, values derived by hand below."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pipelines.score import score_command
from pipelines.score_words import WordScoreError, score_recognition

GT = """\
word_1.png, "Café"
word_2.png, "Hello, World!"
word_3.png, "supercalifragilisticexpialidocious"
word_4.png, "a-b-c-d-e-f-g-h-i-j-k-l-m-n"
word_5.png, "!!!"
word_6.png, "EXIT"
word_7.png, "Ünïcode"
word_8.png, "ﬁne"
word_9.png, "Naïve"
"""
# 36-char GT after preprocessing (whitespace out, NFKD to ASCII, > 25 dropped, lower-case, [0-9a-z] only):
#   1 cafe; 2 helloworld; 3 dropped (34 > 25); 4 dropped (27 > 25 *before* the dashes go: 14 after);
#   5 dropped (empty after the adapter); 6 exit; 7 unicode; 8 fine (the ligature folds); 9 naive.
PRED = """\
word_1.png, "CAFE", 0.99
word_2.png, "hello world"
word_3.png, "super"
word_6.png, "EX1T"
word_7.png, "unicod"
word_9.png, "naïve"
"""
# Predictions only go through the adapter (no NFKD): 1 cafe (right), 2 helloworld (right), 6 ex1t
# (NED 1/4), 7 unicod (NED 1/7), 8 no line -> "" (NED 1), 9 "nave" (the ï is dropped, not folded: NED 1/5).
# Counted words: 1, 2, 6, 7, 8, 9 -> n = 6, 2 right -> accuracy 1/3;
# mean NED = (0 + 0 + 1/4 + 1/7 + 1 + 1/5) / 6, 1 - NED = 1 - that.
ONE_MINUS_NED_36 = 1 - (1 / 4 + 1 / 7 + 1 + 1 / 5) / 6


def write(tmp_path: Path, gt: str = GT, pred: str = PRED) -> tuple[Path, Path]:
    g, p = tmp_path / "gt.txt", tmp_path / "pred.txt"
    g.write_text(gt, encoding="utf-8")
    p.write_text(pred, encoding="utf-8")
    return g, p


def test_charset_36(tmp_path: Path) -> None:
    result = score_recognition(*write(tmp_path))
    assert result["n"] == 6 and result["correct"] == 2
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["one_minus_ned"] == pytest.approx(ONE_MINUS_NED_36)
    assert result["missing_predictions"] == ["word_8.png"]
    assert result["dropped"]["count"] == 3
    assert sorted(result["dropped"]["words"]) == ["word_3.png", "word_4.png", "word_5.png"]
    assert "longer than 25" in result["dropped"]["words"]["word_4.png"]
    by_name = {w["name"]: w for w in result["per_word"]}
    assert (by_name["word_1.png"]["gt"], by_name["word_1.png"]["pred"]) == ("cafe", "cafe")
    assert (by_name["word_8.png"]["gt"], by_name["word_8.png"]["pred"]) == ("fine", "")
    assert by_name["word_9.png"]["pred"] == "nave" and by_name["word_9.png"]["ned"] == pytest.approx(0.2)


def test_cased_charsets(tmp_path: Path) -> None:
    r62 = score_recognition(*write(tmp_path), charset=62)
    # 62 keeps case: GT Cafe, HelloWorld, EXIT, Unicode, fine, Naive; predictions CAFE, helloworld, EX1T,
    # unicod, "", nave -> none right. NED: lev(CAFE, Cafe) 3/4, lev(helloworld, HelloWorld) 2/10, 1/4,
    # lev(unicod, Unicode) 2/7, 1, lev(nave, Naive) 2/5.
    assert (r62["n"], r62["accuracy"]) == (6, 0.0)
    assert r62["one_minus_ned"] == pytest.approx(1 - (3 / 4 + 2 / 10 + 1 / 4 + 2 / 7 + 1 + 2 / 5) / 6)
    r94 = score_recognition(*write(tmp_path), charset=94)
    # 94 keeps punctuation: "!!!" is a word now (no prediction line -> NED 1), "Hello,World!" vs "helloworld"
    assert r94["n"] == 7 and r94["dropped"]["count"] == 2 and r94["accuracy"] == 0.0
    assert {w["name"]: w["gt"] for w in r94["per_word"]}["word_2.png"] == "Hello,World!"


def test_bad_input_names_file_and_line(tmp_path: Path) -> None:
    g, p = write(tmp_path, pred=PRED + 'word_77.png, "x"\n')
    with pytest.raises(WordScoreError, match=rf"^{p}:7: word_77\.png is not a word of {g}"):
        score_recognition(g, p)
    g, p = write(tmp_path, pred='word_1.png, "cafe\n')
    with pytest.raises(WordScoreError, match=rf"^{p}:1: text has no closing quote"):
        score_recognition(g, p)
    g, p = write(tmp_path, gt=GT + "word_10.png, unquoted\n")
    with pytest.raises(WordScoreError, match=rf"^{g}:10: text must be double-quoted"):
        score_recognition(g, p)
    g, p = write(tmp_path)
    with pytest.raises(WordScoreError, match="unknown charset size 40"):
        score_recognition(g, p, charset=40)


def test_cli(tmp_path: Path) -> None:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    app.command("score")(score_command)
    g, p = write(tmp_path)
    args = ["score", "--protocol", "recognition", "--gt", str(g), "--pred", str(p)]
    out = CliRunner().invoke(app, args + ["--json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    assert {"accuracy", "one_minus_ned", "n", "per_word"} <= set(payload)
    assert payload["accuracy"] == pytest.approx(1 / 3)
    table = CliRunner().invoke(app, args + ["--charset", "62"])
    assert table.exit_code == 0 and "charset 62" in table.stdout
    assert "3 GT word(s) dropped by preprocessing: 2 longer than 25 characters" in table.stdout
    assert "| gt.txt | 6 | 0.00 |" in table.stdout
