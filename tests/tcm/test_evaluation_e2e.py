"""tcm.evaluation_e2e: the RRC E2E / word-spotting rules (spotting.md §3.4 table, both modes), matching order,
don't-care handling, confidences, and the line parsers."""

from __future__ import annotations

import numpy as np
import pytest

from tcm.evaluation_e2e import (
    E2E,
    WORD_SPOTTING,
    SpottedWord,
    SpottingFileError,
    dictionary_transcription,
    evaluate_spotting,
    include_in_dictionary,
    parse_adet,
    parse_rrc_e2e,
    spotting_image,
    transcription_match,
)


def quad(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)  # (4, 2) TL, TR, BR, BL


BOX = quad(0, 0, 100, 20)
FAR = quad(500, 500, 600, 520)

# spotting.md §3.4: (GT, prediction, E2E outcome, word-spotting outcome); "dc" = the GT becomes don't care.
TABLE = [
    ("Hello!", "HELLO", True, True),  # E2E: the trailing ! may be dropped; WS: GT cleaned to Hello
    ("(Hello)", "hello", True, True),  # both ends
    ("don't", "dont", False, "dc"),  # E2E: inner ' must match; WS: inner space after cleaning
    ("e-mail", "email", False, False),  # - is not special; WS keeps e-mail
    ("2015", "2015", True, "dc"),  # WS: digits
    ("at", "at", True, "dc"),  # no length rule in E2E; WS: fewer than 3 letters
    ("McDonald's", "mcdonald", False, True),  # WS strips 's
]


@pytest.mark.parametrize("gt, pred, e2e, ws", TABLE)
def test_worked_cases_end_to_end(gt: str, pred: str, e2e: bool, ws: bool | str) -> None:
    im = spotting_image([BOX], [gt], [False], [SpottedWord(BOX, pred)])
    res = evaluate_spotting([im], "e2e")
    # e2e: every one of these GT words is care; the detection matches it geometrically (IoU 1)
    assert res.counts == {"images": 1, "gt_care": 1, "det_care": 1, "hits": int(e2e)}
    assert res.per_image[0].pairs == [(0, 0, e2e)]  # the pair is consumed whatever the text


@pytest.mark.parametrize("gt, pred, e2e, ws", TABLE)
def test_worked_cases_word_spotting(gt: str, pred: str, e2e: bool, ws: bool | str) -> None:
    im = spotting_image([BOX], [gt], [False], [SpottedWord(BOX, pred)])
    res = evaluate_spotting([im], "word-spotting")
    if ws == "dc":
        # the GT is don't care and the detection on it (area precision 1 > 0.5) is set aside: nothing counts
        assert res.counts == {"images": 1, "gt_care": 0, "det_care": 0, "hits": 0}
        assert res.per_image[0].gt_dontcare.tolist() == [True] and res.per_image[0].det_dontcare.tolist() == [
            True
        ]
        assert (res.per_image[0].precision, res.per_image[0].recall) == (1.0, 1.0)  # the script's empty image
    else:
        assert res.counts == {"images": 1, "gt_care": 1, "det_care": 1, "hits": int(ws)}


def test_text_rules_directly() -> None:
    assert dictionary_transcription("McDonald's") == "McDonald"
    assert dictionary_transcription("-(Hello)!-") == "Hello"
    assert dictionary_transcription("--e-mail--") == "e-mail"
    assert include_in_dictionary("café") and include_in_dictionary("Ωmega")  # Latin-1 / Greek ranges
    assert not include_in_dictionary("a×b") and not include_in_dictionary("x·y")  # × ÷ · refused outright
    assert not include_in_dictionary("ab") and include_in_dictionary("ab", min_length=2)
    assert not include_in_dictionary("don't") and not include_in_dictionary("R2D2")
    assert transcription_match("[06]", "06") and transcription_match("(06", "06")
    assert not transcription_match("((06))", "06")  # one character at each end only
    assert not transcription_match("HELLO", "HELLO!")  # the prediction's extra ! is never dropped
    assert not transcription_match("", "A") and transcription_match("", "")
    assert transcription_match("hello", "HeLLo", WORD_SPOTTING) and not transcription_match(
        "hello!", "hello", WORD_SPOTTING
    )


def test_duplicates_in_both_orders_and_dont_care_detections() -> None:
    gt = [BOX, quad(0, 50, 100, 70), quad(200, 0, 300, 20)]
    texts = ["Hello", "World", "###"]
    words = [
        SpottedWord(BOX, "Helo"),  # wrong first: consumes Hello ...
        SpottedWord(BOX, "Hello"),  # ... the right duplicate is a false positive
        SpottedWord(quad(0, 50, 100, 70), "world"),  # right first: a hit ...
        SpottedWord(quad(0, 51, 100, 71), "Wrld"),  # ... the wrong duplicate (IoU 19/21) a false positive
        SpottedWord(quad(210, 2, 290, 18), "x"),  # inside the ### word: set aside
        SpottedWord(FAR, "far"),  # on nothing: false positive
    ]
    res = evaluate_spotting([spotting_image(gt, texts, [False] * 3, words)], E2E)
    # care GT 2, care dets 6 - 1 = 5, hits 1 (World): P 1/5, R 1/2
    assert res.counts == {"images": 1, "gt_care": 2, "det_care": 5, "hits": 1}
    assert (res.precision, res.recall) == (0.2, 0.5)
    assert res.per_image[0].pairs == [(0, 0, False), (1, 2, True)]
    assert res.per_image[0].det_dontcare.tolist() == [False, False, False, False, True, False]
    # sorted by confidence, the right Hello comes first and scores; ties keep file order
    scored = [
        SpottedWord(w.points, w.text, s) for w, s in zip(words, [0.2, 0.9, 0.5, 0.5, 0.1, 0.1], strict=True)
    ]
    res = evaluate_spotting([spotting_image(gt, texts, [False] * 3, scored)], E2E, confidences=True)
    assert res.counts["hits"] == 2 and res.per_image[0].order.tolist() == [1, 2, 3, 0, 4, 5]
    # AP: care dets by confidence: Hello (hit), world (hit), Wrld, Helo, far -> (1/1 + 2/2) / 2 care GT = 1.0
    assert res.ap == pytest.approx(1.0)


def test_only_dont_care_ground_truth() -> None:
    im = spotting_image([BOX], ["###"], [False], [SpottedWord(FAR, "x")])
    res = evaluate_spotting([im], E2E)
    # no care GT: per-image recall 1, precision 0 (a care detection); globally P = 0 (0 of 1), R = 0 (0 of 0)
    assert (res.per_image[0].recall, res.per_image[0].precision) == (1.0, 0.0)
    assert (res.precision, res.recall, res.hmean) == (0.0, 0.0, 0.0)


def test_parse_rrc_e2e_lines() -> None:
    text = "\n".join(
        [
            "0,0,100,0,100,20,0,20,Hello, world",  # everything after the 8th comma, commas included
            "0,20,100,20,100,0,0,0,06",  # counter-clockwise: made clockwise and counted; `06` stays text
            ' 1 , 2 ,3,4,5,6,7,8,"say \\"hi\\" \\\\ "',  # quoted: unquoted and unescaped
            "",
            "1,2,3,4,5,6,7,8,",  # an empty transcription is a transcription (the script's regex accepts it)
        ]
    )
    got = parse_rrc_e2e(text, "res_img_1.txt")
    assert got.texts == ["Hello, world", "06", 'say "hi" \\ ', ""]
    assert got.lines.tolist() == [1, 2, 3, 5] and got.misoriented == 1
    assert got.polygons.flat[4:8].tolist() == [[0, 20], [0, 0], [100, 0], [100, 20]]  # first corner kept
    conf = parse_rrc_e2e("0,0,1,0,1,1,0,1,0.75,a,b\n", "x", confidences=True)
    assert conf.texts == ["a,b"] and conf.scores.tolist() == [0.75]
    with pytest.raises(SpottingFileError, match=r"^x:1: confidence 'high' is not a number"):
        parse_rrc_e2e("0,0,1,0,1,1,0,1,high,a\n", "x", confidences=True)


def test_parse_adet_lines() -> None:
    got = parse_adet('0,0,10,0,10,5,0,5,####"Tom\'s"\n1.5,0,9,0,9,5,####x\n', "0000001.txt")
    assert got.texts == ["Tom's", "x"] and got.polygons.sizes.tolist() == [4, 3]
    for bad, message in [
        ("0,0,10,0,10,5,0,5,Hello", "no ',####'"),
        ("0,0,10,0,####a", "found 4"),
        ("0,0,10,0,10,x,####a", "coordinate 6 'x' is not a number"),
    ]:
        with pytest.raises(SpottingFileError, match=rf"^0000001\.txt:1: .*{message}"):
            parse_adet(bad + "\n", "0000001.txt")
