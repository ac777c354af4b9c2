"""`tcm score --protocol e2e|word-spotting|totaltext-e2e` on folders: the six IC15 fixture images with
hand-perturbed submissions (numbers derived by hand below), bad input, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pipelines.score import score_command
from pipelines.score_spotting import SpottingScoreError, score_spotting

# The fixture's care words (clockwise integer quads, as in its gt files):
GENAXIS = "377,117,463,117,465,130,378,130"  # img 1 "Genaxis Theatre"
SIX = "493,115,519,115,519,131,493,131"  # img 1 "[06]"
DC_1 = "374,155,409,155,409,170,374,170"  # img 1 ###
SIXTY_TWO = "492,151,551,151,551,170,492,170"  # img 1 "62-03"
CARPARK = "376,198,422,198,422,212,376,212"  # img 1 "Carpark"
EXIT = "602,173,635,175,634,197,602,196"  # img 2 "EXIT"
I2R = "734,310,792,320,792,364,738,361"  # img 2 "I2R"
DC_4 = "692,268,710,268,710,293,692,293"  # img 4 ###
RESERVE = "111,459,206,461,207,482,113,480"  # img 6 "Reserve"
CAUTION = "641,456,693,454,693,467,641,469"  # img 6 "CAUTION"
FAR = "0,600,50,600,50,620,0,620"  # img 6: on nothing


def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app: `score` registered as pipelines/cli.py registers it."""

    app.command("score")(score_command)
    return app


@pytest.fixture()
def perturbed(ic15_fixture: Path, tmp_path: Path) -> Path:
    """A submission for the six fixture images (img_3 and img_5 have no file)."""
    pred = tmp_path / "pred"
    pred.mkdir()
    files = {
        1: [
            f"{GENAXIS},Genaxis Theatre",  # right
            f"{SIX},06",  # right in e2e: the GT's [ and ] may both be dropped
            f"{SIXTY_TWO},6203",  # wrong reading (the inner - must be reproduced)
            f"{CARPARK},Carpork",  # duplicate, wrong one first: it uses up the GT ...
            f"{CARPARK},Carpark",  # ... so the right one is a false positive
            f"{DC_1},xyz",  # on a ### word: set aside
        ],
        2: [
            f"{EXIT},EXIT",  # duplicate, right one first: a hit ...
            f"{EXIT},EXT",  # ... and the wrong one a false positive
            f"{I2R},12R",  # wrong reading
        ],
        4: [f"{DC_4},foo"],  # on a ### word: set aside
        6: [
            f"{RESERVE},reserve",  # right (case does not matter)
            f"{CAUTION},CAUTION!",  # wrong: only the GT's end characters may be dropped
            f"{FAR},hello",  # false positive
        ],
    }
    for n, lines in files.items():
        (pred / f"res_img_{n}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return pred


def test_e2e_on_the_fixture(ic15_fixture: Path, perturbed: Path) -> None:
    result = score_spotting(ic15_fixture / "gts", perturbed, "e2e")
    # Care GT (not ###): img1 4 (Genaxis Theatre, [06], 62-03, Carpark), img2 2, img3 2, img4 0, img5 0,
    # img6 2 -> 10. Care detections: img1 6 - 1 on ### = 5, img2 3, img4 1 - 1 = 0, img6 3 -> 11.
    # Hits: img1 Genaxis Theatre + 06 = 2 (6203 wrong, Carpork consumed Carpark), img2 EXIT = 1,
    # img6 reserve = 1 -> 4. P = 4/11, R = 4/10, H = 2PR/(P+R) = (32/110)/(84/110) = 8/21.
    assert result["counts"] == {"images": 6, "gt_care": 10, "det_care": 11, "hits": 4}
    assert result["precision"] == pytest.approx(4 / 11)
    assert result["recall"] == pytest.approx(0.4)
    assert result["hmean"] == pytest.approx(8 / 21)
    assert result["missing_predictions"] == ["3", "5"]
    one = result["per_image"]["1"]
    assert (one["gt_care"], one["det_care"], one["hits"]) == (4, 5, 2)
    carpark = [p for p in one["pairs"] if p["gt_text"] == "Carpark"]
    assert carpark == [
        {"gt": 4, "det_line": 4, "gt_text": "Carpark", "det_text": "Carpork", "correct": False}
    ]
    assert result["per_image"]["4"]["precision"] == 1.0 and result["per_image"]["4"]["recall"] == 1.0
    assert result["per_image"]["3"]["recall"] == 0.0  # no file: both fusionopolis missed
    # Detection only (text ignored, same care sets here): every care GT with a box on it matches once: img1 4,
    # img2 2 (EXIT by its first box), img6 2 -> 8 of 10; care detections 11. P = 8/11, R = 8/10.
    assert result["detection_only"]["precision"] == pytest.approx(8 / 11)
    assert result["detection_only"]["recall"] == pytest.approx(0.8)


def test_word_spotting_on_the_fixture(ic15_fixture: Path, perturbed: Path) -> None:
    result = score_spotting(ic15_fixture / "gts", perturbed, "word-spotting")
    # The dictionary rule makes don't care: Genaxis Theatre (inner space), [06], 62-03, I2R (digits).
    # Care GT: img1 Carpark 1, img2 EXIT 1, img3 fusionopolis x2 2, img6 Reserve + CAUTION 2 -> 6.
    # Detections on those don't-care words are set aside: img1 keeps Carpork + Carpark (2), img2 keeps EXIT +
    # EXT (2), img6 3 -> 7. Hits: img1 0 (Carpork consumed Carpark), img2 1, img6 1 -> 2.
    # P = 2/7, R = 2/6, H = (4/21) / (13/21) = 4/13.
    assert result["counts"] == {"images": 6, "gt_care": 6, "det_care": 7, "hits": 2}
    assert result["precision"] == pytest.approx(2 / 7)
    assert result["recall"] == pytest.approx(1 / 3)
    assert result["hmean"] == pytest.approx(4 / 13)


def test_confidences_sort_before_matching(ic15_fixture: Path, perturbed: Path) -> None:
    # The same img1 with confidences: the right Carpark (0.9) now comes before the wrong one (0.3) and scores.
    lines = [
        f"{GENAXIS},0.8,Genaxis Theatre",
        f"{SIX},0.7,06",
        f"{SIXTY_TWO},0.6,6203",
        f"{CARPARK},0.3,Carpork",
        f"{CARPARK},0.9,Carpark",
        f"{DC_1},0.5,xyz",
    ]
    for path in perturbed.iterdir():
        path.unlink()
    (perturbed / "res_img_1.txt").write_text("\n".join(lines) + "\n")
    result = score_spotting(ic15_fixture / "gts", perturbed, "e2e", confidences=True)
    # img1 hits 3 (Genaxis Theatre, 06, Carpark), care detections 5, care GT 10 in all.
    assert result["counts"] == {"images": 6, "gt_care": 10, "det_care": 5, "hits": 3}
    # AP: care detections ranked 0.9 Carpark (hit), 0.8 Genaxis (hit), 0.7 06 (hit), 0.6 6203, 0.3 Carpork:
    # (1/1 + 2/2 + 3/3) / 10 care GT = 0.3.
    assert result["ap"] == pytest.approx(0.3)
    carpark = [p for p in result["per_image"]["1"]["pairs"] if p["gt_text"] == "Carpark"]
    assert carpark[0]["det_line"] == 5 and carpark[0]["correct"]
    # Without --confidences, as the official default, everything after the 8th comma is the transcription
    # (`0.8,Genaxis Theatre`): the file reads, and every reading is wrong.
    plain = score_spotting(ic15_fixture / "gts", perturbed, "e2e")
    assert plain["counts"]["hits"] == 0


def test_missing_gt_and_bad_lines(ic15_fixture: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "res_img_7.txt").write_text(f"{EXIT},EXIT\n")
    with pytest.raises(SpottingScoreError, match=r"res_img_7\.txt: no ground truth for this image"):
        score_spotting(ic15_fixture / "gts", pred, "e2e")
    (pred / "res_img_7.txt").unlink()
    cases = {
        "1,2,3,4,5,6,7,word": "found 7 integer coordinate(s) before 'word'",
        "1,2,3,4,5,6,7,8": "the transcription is missing",
        "1,2,3,4,5,6,7": "7 coordinate(s) and no transcription",
        "1,2,3,4.5,5,6,7,8,word": "coordinate 4 '4.5' is not an integer",
    }
    for bad, message in cases.items():
        (pred / "res_img_2.txt").write_text(f"{EXIT},EXIT\n{bad}\n")
        with pytest.raises(SpottingScoreError) as err:
            score_spotting(ic15_fixture / "gts", pred, "e2e")
        assert str(err.value).startswith(f"{pred / 'res_img_2.txt'}:2: "), str(err.value)
        assert message in str(err.value)


def test_cli_json_and_orientation_warning(ic15_fixture: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    ccw = "602,173,602,196,634,197,635,175"  # EXIT's corners counter-clockwise (TL, BL, BR, TR)
    (pred / "res_img_2.txt").write_text(f"{ccw},exit\n{I2R},I2R\n")
    runner = CliRunner()
    args = ["score", "--protocol", "e2e", "--gt", str(ic15_fixture / "gts"), "--pred", str(pred), "--json"]
    out = runner.invoke(cli(), args)
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    assert payload["counts"] == {"images": 6, "gt_care": 10, "det_care": 2, "hits": 2}
    assert payload["misoriented"] == {"res_img_2.txt": 1}
    assert "warning: 1 polygon(s)" in out.stderr and "the RRC script would refuse" in out.stderr
    table = runner.invoke(cli(), args[:-1] + ["--protocol", "word-spotting"])
    assert table.exit_code == 0 and "hmean" in table.stdout and "word-spotting" in table.stdout
    (pred / "res_img_2.txt").write_text("1,2,3,4,5,6,7\n")
    bad = runner.invoke(cli(), args)
    assert (
        bad.exit_code == 1 and f"{pred / 'res_img_2.txt'}:1: " in bad.stderr and "Traceback" not in bad.output
    )
    helps = runner.invoke(cli(), ["score", "--help"]).stdout
    assert "word-spotting" in helps and "refuse" in helps and "--confidences" in helps


def test_totaltext_polygons(tmp_path: Path) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    # An 8-point curved word, a 6-point word with digits (word-spotting: don't care) and a ### region.
    arc = "0,0,50,10,100,10,150,0,150,30,100,40,50,40,0,30"
    (gt / "12.txt").write_text(
        f"{arc},####Hello\n200,0,260,0,260,30,230,35,200,30,200,15,####2015\n300,0,400,0,400,50,300,50,#######\n"
    )
    # AdelaiDet's file name (7 digits), the arc reversed (the orientation AdelaiDet wants), a box inside the
    # digit word (don't care) and one on the ### region (don't care); the two boxes are written TL, TR, BR, BL
    # (clockwise on screen, the RRC's order), which AdelaiDet refuses: normalised and counted.
    rev = ",".join(",".join(p) for p in reversed([arc.split(",")[i : i + 2] for i in range(0, 16, 2)]))
    (pred / "0000012.txt").write_text(
        f"{rev},####HELLO\n205,5,255,5,255,25,205,25,####2015\n310,5,390,5,390,45,310,45,####x\n"
    )
    result = score_spotting(gt, pred, "totaltext-e2e")
    # care GT: Hello only (2015 has digits, ### is don't care); care detections: the arc only -> 1/1/1.
    assert result["counts"] == {"images": 1, "gt_care": 1, "det_care": 1, "hits": 1}
    assert result["misoriented"] == {"0000012.txt": 2}
    # Detection only: 2015 is care there: the arc and the inner box match 2 of 2 care GT (the inner box, area
    # 1000, lies inside the 6-gon of area 60 x 30 + 60 x 5 / 2 = 1950: IoU 1000/1950 = 0.51 > 0.5), 2 care dets.
    assert result["detection_only"] == {"precision": 1.0, "recall": 1.0, "hmean": 1.0}
    (pred / "0000012.txt").write_text(f"{arc},####HELLO\n")  # the arc TL-first, clockwise on screen
    again = score_spotting(gt, pred, "totaltext-e2e")
    assert (
        again["misoriented"] == {"0000012.txt": 1} and again["counts"]["hits"] == 1
    )  # same region, same score


def test_totaltext_with_the_dataset_reader(tmp_path: Path) -> None:
    from tcm.data.formats import get_format
    from tcm.types import Instance

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    arc = np.array([[0, 0], [50, 10], [100, 10], [150, 0], [150, 30], [100, 40], [50, 40], [0, 30]], float)
    box = np.array([[200, 0], [300, 0], [300, 40], [200, 40]], float)
    fmt = get_format("totaltext")
    (gt / "poly_gt_img7.txt").write_bytes(
        fmt.write([Instance(arc, "Tom's"), Instance(box, "#", ignore=True), Instance(box + 300, "Café")])
    )
    flat = ",".join(str(int(v)) for v in arc[::-1].reshape(-1))  # AdelaiDet's orientation
    (pred / "0000007.txt").write_text(f"{flat},####TOM\n210,5,290,5,290,35,210,35,####x\n")
    result = score_spotting(gt, pred, "totaltext-e2e", gt_format="totaltext")
    # Tom's -> TOM (word spotting drops 's): a hit; the box on the `#` word is set aside (the reader's flag);
    # Café is care (é is in the allowed range) and missed. care GT 2, care dets 1, hits 1.
    assert result["counts"] == {"images": 1, "gt_care": 2, "det_care": 1, "hits": 1}
    assert result["per_image"]["7"]["gt_file"] == "poly_gt_img7.txt"
    with pytest.raises(SpottingScoreError, match="--gt-format applies to --protocol totaltext-e2e"):
        score_spotting(gt, pred, "e2e", gt_format="totaltext")
