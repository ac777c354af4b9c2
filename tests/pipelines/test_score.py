"""pipelines.score: submission files, folder scoring, bad input, and the `tcm score` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pipelines.score import (
    ScoreError,
    read_submission,
    score_command,
    score_folders,
    submission_name,
    write_submission,
)
from tcm.types import Detection

FIXTURE = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "icdar2015"


def box(x0: int, y0: int, x1: int, y1: int) -> list[int]:
    """IC15 corner list, clockwise on screen from the top left."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def line(values: list[int], tail: str | None = None) -> str:
    return ",".join(str(v) for v in values) + (f",{tail}" if tail is not None else "")


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Three IC15 images: 1 (two words + a ###), 2 (one word), 10 (one word). Predictions made by each test."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    (gt / "gt_img_1.txt").write_bytes(
        b"\xef\xbb\xbf"  # the originals carry a BOM
        + "\n".join(
            [
                line(box(0, 0, 100, 20), "Hello"),
                line(box(0, 50, 100, 70), "a,b"),
                line(box(200, 0, 300, 20), "###"),
            ]
        ).encode()
    )
    (gt / "gt_img_2.txt").write_text(line(box(10, 10, 50, 30), "EXIT") + "\n")
    (gt / "gt_img_10.txt").write_text(line(box(0, 0, 40, 40), "X") + "\n")
    (gt / "img_1.jpg").write_bytes(b"not read")  # images beside the annotations are ignored
    return gt, pred


# ------------------------------------------------------------------------------------- submission files


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    ccw = np.array([[0.4, 0.0], [0.0, 20.6], [100.2, 20.0], [99.7, 0.0]])  # counter-clockwise on screen
    tri = np.array([[0, 0], [10, 0], [5, 8]], dtype=np.float64)
    path = write_submission(
        tmp_path / "sub" / "res_img_7.txt", [Detection(ccw, 0.123456789), Detection(tri, 1.0)]
    )
    assert (
        path.read_text().splitlines()[0] == "0,0,100,0,100,20,0,21,0.123456789"
    )  # clockwise from TL, rounded
    back = read_submission(path)
    assert back[0].score == 0.123456789 and back[1].score == 1.0  # scores exact: sweeps see the same values
    assert back[0].points.tolist() == [[0, 0], [100, 0], [100, 20], [0, 21]]
    assert back[1].points.tolist() == [[0, 0], [10, 0], [5, 8], [5, 8]]  # triangle: last corner twice (>= 8)
    assert submission_name("img_7.jpg") == "res_img_7.txt"


def test_read_submission_forms(tmp_path: Path) -> None:
    path = tmp_path / "res_img_1.txt"
    body = "\r\n".join(
        [
            line(box(0, 0, 10, 10)),  # no confidence -> 1.0
            "",
            " 0, 0 ,10,0,10,10,0,10 , 0.25",  # spaces around fields
            line([0, 0, 5, -3, 10, 0, 10, 10, 5, 13, 0, 10], "0.5"),  # a 6-point polygon with a confidence
            line([0, 10, 10, 10, 10, 0, 0, 0], "0.75"),  # counter-clockwise -> accepted, made clockwise
        ]
    )
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    got = read_submission(path)
    assert [d.score for d in got] == [1.0, 0.25, 0.5, 0.75]
    assert got[2].points.shape == (6, 2)
    assert got[3].points.tolist() == [[0, 10], [0, 0], [10, 0], [10, 10]]  # BL first as given, now clockwise


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("1,2,3,4,5,6,7,x", "coordinate 8 'x' is not an integer"),
        ("1,2,3,4", "k >= 4 points"),
        ("1,2,3,4,5,6,7", "found 6 coordinate field(s)"),  # 7 fields: 6 coordinates + a confidence (#17)
        ("1,2,3,4,5,6", "found 6 coordinate field(s)"),  # a triangle: the RRC needs 4 corners
        ("1,2,3,4,5,6,7,8,", "confidence '' is not a number"),
        ("1,2,3,4,5,6,7,8,9,1e1", "coordinate 10 '1e1' is not an integer"),
        ("1,2,3,4,5,6,7,8,high", "confidence 'high' is not a number"),
        ("1.5,2,3,4,5,6,7,8", "coordinate 1 '1.5' is not an integer"),
        ("1,2,3,4,5,6,7,8,nan", "not finite"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, bad: str, reason: str) -> None:
    path = tmp_path / "res_img_3.txt"
    path.write_text(line(box(0, 0, 1, 1)) + "\n" + line(box(0, 0, 1, 1), "0.5") + "\n" + bad + "\n")
    with pytest.raises(ScoreError) as err:
        read_submission(path)
    assert str(err.value).startswith(f"{path}:3: ")
    assert reason in str(err.value)


# ------------------------------------------------------------------------------------- folders


def test_score_folders_counts_missing_images_as_missed(folders: tuple[Path, Path]) -> None:
    gt, pred = folders
    (pred / "res_img_1.txt").write_text(
        "\n".join(
            [
                line(box(0, 0, 100, 20), "0.9"),  # Hello -> match
                line([0, 70, 100, 70, 100, 50, 0, 50], "0.8"),  # a,b counter-clockwise -> accepted, match
                line(box(200, 0, 300, 20), "0.7"),  # on the ### box -> don't care
                line(box(500, 500, 520, 520), "0.4"),  # false positive
            ]
        )
    )
    (pred / "res_img_10.txt").write_text(
        line(box(20, 0, 60, 40), "0.95") + "\n"
    )  # IoU 20*40 / (2*1600 - 800) = 1/3
    result = score_folders(gt, pred)
    # matched 2 (image 1); care GT 2 + 1 + 1 = 4 (image 2 has no file: its GT is missed); care det 3 + 1 = 4
    assert result["counts"] == {"images": 3, "gt_care": 4, "det_care": 4, "matched_gt": 2, "matched_det": 2}
    assert (result["precision"], result["recall"], result["hmean"]) == (0.5, 0.5, 0.5)
    assert list(result["per_image"]) == ["1", "2", "10"]  # natural order of the image keys
    assert result["missing_predictions"] == ["2"]
    assert result["per_image"]["2"]["pred_file"] is None and result["per_image"]["2"]["recall"] == 0.0
    assert result["per_image"]["1"]["gt_file"] == "gt_img_1.txt"
    sweep = score_folders(gt, pred, sweep=True)["sweep"]
    assert [r["threshold"] for r in sweep["rows"]] == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    # 0.3, 0.4: H = 0.5; 0.5 .. 0.8: the 0.4 false positive goes, P = 2/3, R = 1/2, H = 4/7;
    # 0.9: the 0.8 match goes too, P = 1/2, R = 1/4. Best: 4/7 first reached at 0.5.
    assert [r["hmean"] for r in sweep["rows"]] == pytest.approx([0.5, 0.5] + [4 / 7] * 4 + [1 / 3])
    assert sweep["best_threshold"] == 0.5 and "optimistic" in sweep["note"]


def test_empty_prediction_folder_scores_zero(folders: tuple[Path, Path]) -> None:
    gt, pred = folders
    result = score_folders(gt, pred)
    assert (result["precision"], result["recall"], result["hmean"]) == (0.0, 0.0, 0.0)
    assert result["missing_predictions"] == ["1", "2", "10"]


def test_deteval_protocol_through_folders(folders: tuple[Path, Path]) -> None:
    gt, pred = folders
    (pred / "res_img_2.txt").write_text(line(box(10, 10, 30, 30)) + "\n" + line(box(30, 10, 50, 30)) + "\n")
    result = score_folders(gt, pred, protocol="deteval")
    assert result["protocol"]["kind"] == "deteval" and result["protocol"]["tr"] == 0.8
    assert result["counts"]["matched_gt"] == pytest.approx(0.8)  # the split EXIT: one-to-many credit
    assert result["counts"]["matched_det"] == pytest.approx(1.6)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("res_img_4.txt", "", "res_img_4.txt: no ground truth for this image"),
        ("results.txt", "", "results.txt: not a prediction file"),
        ("res_img_2.txt", "1,2,3\n", "res_img_2.txt:1: "),
    ],
)
def test_bad_prediction_folder(folders: tuple[Path, Path], name: str, content: str, message: str) -> None:
    gt, pred = folders
    (pred / name).write_text(content)
    with pytest.raises(ScoreError, match=message.replace(".", r"\.")):
        score_folders(gt, pred)


def test_bad_arguments_and_ground_truth(folders: tuple[Path, Path], tmp_path: Path) -> None:
    gt, pred = folders
    with pytest.raises(ScoreError, match="unknown evaluation protocol 'map'"):
        score_folders(gt, pred, protocol="map")
    with pytest.raises(ScoreError, match="unknown dataset format 'coco'"):
        score_folders(gt, pred, gt_format="coco")
    with pytest.raises(ScoreError, match="prediction folder does not exist"):
        score_folders(gt, tmp_path / "nowhere")
    with pytest.raises(ScoreError, match="no icdar2015 ground-truth files"):
        score_folders(pred, pred)
    (gt / "gt_img_2.txt").write_text("1,2,3\n")
    with pytest.raises(ScoreError, match=r"gt_img_2\.txt:1: "):
        score_folders(gt, pred)


# ------------------------------------------------------------------------------------- CLI


def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app: `score` registered as the lead registers it in pipelines/cli.py."""

    app.command("score")(score_command)
    return app


def test_cli_json(folders: tuple[Path, Path]) -> None:
    gt, pred = folders
    (pred / "res_img_10.txt").write_text(line(box(0, 0, 40, 40)) + "\n")
    result = CliRunner().invoke(cli(), ["score", "--gt", str(gt), "--pred", str(pred), "--json", "--sweep"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # stdout is exactly one JSON object
    assert (payload["precision"], payload["recall"]) == (1.0, 0.25)
    assert set(payload["per_image"]) == {"1", "2", "10"} and len(payload["sweep"]["rows"]) == 7


def test_cli_table_and_errors(folders: tuple[Path, Path]) -> None:
    gt, pred = folders
    runner = CliRunner()
    ok = runner.invoke(cli(), ["score", "--gt", str(gt), "--pred", str(pred), "--protocol", "deteval"])
    assert ok.exit_code == 0 and "hmean      0.0000" in ok.stdout and "deteval" in ok.stdout
    (pred / "res_img_9.txt").write_text("")
    bad = runner.invoke(cli(), ["score", "--gt", str(gt), "--pred", str(pred), "--json"])
    assert bad.exit_code == 1
    assert bad.stdout == ""
    assert bad.stderr.strip().startswith("error: ") and "res_img_9.txt" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.output
    helps = runner.invoke(cli(), ["score", "--help"]).stdout
    for option in ("--gt", "--pred", "--protocol", "--gt-format", "--json", "--sweep"):
        assert option in helps


def test_cli_on_the_real_fixture(tmp_path: Path) -> None:
    if not FIXTURE.is_dir():
        pytest.skip(f"IC15 fixture not present at {FIXTURE} (lives beside the repo, not in a user's clone)")
    from tcm.data.formats import get_format

    fmt = get_format("icdar2015")
    for gt_file in sorted((FIXTURE / "gts").glob("gt_img_*.txt")):
        care = [i for i in fmt.parse(gt_file.read_bytes(), str(gt_file)) if not i.ignore]
        image = gt_file.name.removeprefix("gt_").replace(".txt", ".jpg")
        write_submission(tmp_path / submission_name(image), [Detection(i.points, 0.9) for i in care[:1]])
    result = CliRunner().invoke(
        cli(), ["score", "--gt", str(FIXTURE / "gts"), "--pred", str(tmp_path), "--json"]
    )
    payload = json.loads(result.stdout)
    # one exact copy of the first care GT per image that has one: images 1, 2, 3, 6 -> 4 matches of 10 care GT
    assert payload["counts"] == {"images": 6, "gt_care": 10, "det_care": 4, "matched_gt": 4, "matched_det": 4}
    assert payload["precision"] == 1.0 and payload["recall"] == 0.4


def test_folder_at_once_reader_equals_the_line_parser(tmp_path: Path) -> None:
    from pipelines import score_batch
    from pipelines.score import parse_submission

    rng = np.random.default_rng(0)
    files = {}
    for n in range(6):
        rows = [line(list(rng.integers(-5, 900, 8)), repr(float(rng.random()))) for _ in range(20)]
        files[tmp_path / f"res_img_{n}.txt"] = ("\r\n" if n == 3 else "\n").join(rows) + "\n"
    files[tmp_path / "res_img_6.txt"] = "\n".join(line(box(0, 0, 5, 5)) for _ in range(3))  # no confidences
    files[tmp_path / "res_img_7.txt"] = line(box(0, 0, 5, 5), "0.5") + "\n\n" + line(box(1, 1, 6, 6), "0.4")
    raw = {path: text.encode() for path, text in files.items()}
    batch = score_batch.submissions(raw)
    assert set(batch) == set(raw) - {tmp_path / "res_img_7.txt"}  # a blank line inside: line by line
    for path, sub in batch.items():
        ref = parse_submission(files[path], str(path))
        assert sub.polygons.flat.tolist() == ref.polygons.flat.tolist()
        assert sub.polygons.sizes.tolist() == ref.polygons.sizes.tolist()
        assert (sub.scores.tolist(), sub.lines.tolist(), sub.reversed) == (
            ref.scores.tolist(),
            ref.lines.tolist(),
            ref.reversed,
        )
    assert sum(s.reversed for s in batch.values()) > 0  # random corners: some counter-clockwise


def test_a_bad_file_among_plain_ones_is_still_named(folders: tuple[Path, Path]) -> None:
    gt, pred = folders
    (pred / "res_img_1.txt").write_text(line(box(0, 0, 100, 20), "0.9") + "\n")
    (pred / "res_img_2.txt").write_text(line(box(0, 0, 1, 1), "0.9") + "\n" + "1,2,3,4,5,6,7,1.5,0.3\n")
    with pytest.raises(ScoreError, match=r"res_img_2\.txt:2: coordinate 8 '1\.5' is not an integer"):
        score_folders(gt, pred)
    (pred / "res_img_2.txt").write_text("1,2,3,4,5,6,7\n")  # seven fields in a file of its own shape
    with pytest.raises(ScoreError, match=r"res_img_2\.txt:1: .*found 6 coordinate field"):
        score_folders(gt, pred)


def test_ground_truth_fast_paths_equal_the_reader(tmp_path: Path) -> None:
    from pipelines import score_batch
    from pipelines.score import _read_ground_truth
    from tcm.data.formats import get_format

    bodies = {
        "gt_img_1.txt": b"\xef\xbb\xbf1,2,30,2,30,9,1,9,Hello\r\n4.5,0,9,0,9,1e1,4.5,10,###\r\n",  # BOM, CRLF, floats
        "gt_img_2.txt": b"0,0,5,0,5,5,0,5, ### \n0,0,5,0,5,5,0,5,a,b\n",  # a comma in a text: line by line
        "gt_img_3.txt": b"0,0,5,0,5,5,0,5,x\n\n0,0,6,0,6,6,0,6,y\n",  # a blank line: not plain
    }
    for name, body in bodies.items():
        (tmp_path / name).write_bytes(body)
    raw = {tmp_path / name: body for name, body in bodies.items()}
    assert set(score_batch.icdar2015_ground_truth(raw)) == {tmp_path / "gt_img_1.txt"}
    got = _read_ground_truth(tmp_path, "icdar2015")
    fmt = get_format("icdar2015")
    for key, name in (("1", "gt_img_1.txt"), ("2", "gt_img_2.txt"), ("3", "gt_img_3.txt")):
        ref = fmt.parse(bodies[name], name)
        assert got[key].polygons.flat.tolist() == np.concatenate([i.points for i in ref]).tolist()
        assert got[key].ignore.tolist() == [i.ignore for i in ref]
    (tmp_path / "gt_img_1.txt").write_bytes(b"1,2,30,2,30,9,1,nan,Hello\n")
    with pytest.raises(ScoreError, match=r"gt_img_1\.txt:1: coordinate 'nan' is not a number"):
        _read_ground_truth(tmp_path, "icdar2015")
