"""`tcm spot`: the Ray Data pipeline gives exactly the single-process loop's output; NMS, lexicon, bad input and
the submission files against our own end-to-end scorer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.spot import ImageSpots, Lexicon, Lexicons, Spot, crop_detections, polygon_nms, write_spots
from tcm.types import Detection

SIDE = 128  # test resize of the tiny detector: the synthetic images' own size, one 128 x 128 forward each


def square(x: float, y: float, side: float = 10.0) -> np.ndarray:
    return np.array([[x, y], [x + side, y], [x + side, y + side], [x, y + side]], dtype=np.float64)


@pytest.fixture(scope="module")
def spotted(tmp_path_factory, ray_local):
    """Tiny random detector + recogniser checkpoints, 5 synthetic images and one undecodable file, one `tcm spot`
    run on Ray (the shared, expensive part) and the local loop on the same files."""
    import torch
    from typer.testing import CliRunner

    from pipelines.checkpoint import save_checkpoint
    from pipelines.cli import app
    from pipelines.spot import SpotSettings, spot_images_local
    from tcm.build import build_detector
    from tcm.config import DetectorConfig
    from tcm.data.synth import write_dataset
    from tcm.recognition.build import build_recognizer
    from tcm.recognition.config import RecognizerConfig

    root = tmp_path_factory.mktemp("spot")
    torch.manual_seed(0)
    det_cfg, rec_cfg = DetectorConfig.tiny(), RecognizerConfig.tiny()
    save_checkpoint(root / "det", build_detector(det_cfg, pretrained=False), det_cfg)
    save_checkpoint(root / "rec", build_recognizer(rec_cfg, pretrained=False), rec_cfg)
    write_dataset("icdar2015", root / "data", 5, seed=3, split="test", height=SIDE, width=SIDE)
    images = root / "data" / "test" / "images"
    (images / "img_9.jpg").write_bytes(b"\xff\xd8 truncated jpeg")  # undecodable: reported, the rest spotted
    out = root / "out"
    result = CliRunner().invoke(
        app,
        ["spot", "--det", str(root / "det"), "--rec", str(root / "rec"), "--images", str(images), "--out", str(out),
         "--long-side", str(SIDE), "--short-side", str(SIDE), "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    paths = sorted(images.iterdir())
    local = spot_images_local(str(root / "det"), str(root / "rec"), paths, SpotSettings(long_side=SIDE, short_side=SIDE))
    return {"root": root, "out": out, "images": images, "local": local}


@pytest.mark.slow  # the shared Ray run (module fixture)
def test_ray_pipeline_equals_the_local_loop(spotted):
    lines = [json.loads(x) for x in (spotted["out"] / "spots.jsonl").read_text().splitlines()]
    expected = [r.record() for r in spotted["local"] if r.error is None]
    assert [r["image"] for r in lines] == [f"img_{k}.jpg" for k in range(1, 6)]
    assert sum(len(r["spots"]) for r in lines) > 0  # the comparison covers crops and readings, not empty lists
    assert lines == expected
    for rec in lines:  # descending confidence, as the protocol rewards
        scores = [s["score"] for s in rec["spots"]]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.slow  # the shared Ray run (module fixture)
def test_undecodable_image_is_reported_and_the_rest_spotted(spotted):
    report = json.loads((spotted["out"] / "report.json").read_text())
    assert report["images"] == 6 and report["spotted"] == 5
    assert [s["image"] for s in report["skipped"]] == ["img_9.jpg"]
    assert "cannot decode image" in report["skipped"][0]["reason"]
    assert sorted(p.name for p in (spotted["out"] / "submission").iterdir()) == [f"res_img_{k}.txt" for k in range(1, 6)]
    words = sum(len(r.spots) for r in spotted["local"] if r.error is None)
    assert report["words"] == words
    overlay = spotted["out"] / "overlays" / "img_1.png"
    from PIL import Image

    with Image.open(overlay) as im:
        assert im.size == (SIDE, SIDE)


@pytest.mark.slow  # the shared Ray run (module fixture)
def test_submission_parses_with_the_e2e_scorer(spotted):
    from pipelines.score_spotting import score_spotting

    gt = spotted["root"] / "data" / "test" / "annotations"
    result = score_spotting(gt, spotted["out"] / "submission", protocol="e2e")
    assert 0.0 <= result["hmean"] <= 1.0
    assert len(result["per_image"]) == 5


@pytest.mark.slow  # the shared Ray run (module fixture)
def test_ground_truth_written_as_spots_scores_one(spotted, tmp_path):
    """The writer's corner order and transcription form are what the scorer reads: GT words written back as
    spots (reversed ring, shuffled start) give precision = recall = 1."""
    from pipelines.score_spotting import score_spotting
    from tcm.evaluation_e2e import parse_rrc_e2e

    gt = spotted["root"] / "data" / "test" / "annotations"
    results = []
    for k in range(1, 6):
        parsed = parse_rrc_e2e((gt / f"gt_img_{k}.txt").read_text(), f"gt_img_{k}.txt")
        flat, sizes = parsed.polygons.flat, parsed.polygons.sizes
        spots = []
        for i, text in enumerate(parsed.texts):
            if text == "###":
                continue
            ring = flat[4 * i : 4 * i + 4][::-1]  # counter-clockwise on screen: the writer turns it back
            spots.append(Spot(np.roll(ring, 1, axis=0), 0.9, text, 0.9))
        assert (sizes == 4).all()
        results.append(ImageSpots(f"img_{k}.jpg", SIDE, SIDE, spots=spots))
    write_spots(results, tmp_path, polygons=False, report={})
    result = score_spotting(gt, tmp_path / "submission", protocol="e2e")
    assert result["precision"] == 1.0 and result["recall"] == 1.0


def test_polygon_lines_are_in_the_orientation_adelaidet_accepts(tmp_path):
    from tcm.evaluation_e2e import parse_adet

    ring = np.array([[0, 0], [20, 0], [40, 5], [40, 15], [20, 10], [0, 10]], dtype=np.float64)  # clockwise
    write_spots([ImageSpots("img_1.jpg", 50, 50, spots=[Spot(ring, 0.9, "CURVE", 0.8)])], tmp_path, polygons=True, report={})
    text = (tmp_path / "submission" / "res_img_1.txt").read_text()
    parsed = parse_adet(text, "res_img_1.txt")
    assert parsed.texts == ["CURVE"] and parsed.misoriented == 0
    assert text.startswith("0,10,20,10,40,15,")  # the ring reversed


def test_nms_keeps_the_higher_score_in_descending_order():
    a = Detection(square(0, 0), 0.9)
    b = Detection(square(1, 0), 0.8)  # IoU with a = 90 / 110 = 0.82: suppressed
    c = Detection(square(100, 100), 0.95)  # far away: kept, first
    d = Detection(square(5, 0), 0.7)  # IoU with a = 50 / 150 = 0.33: kept
    e = Detection(square(0.5, 0), 0.9)  # ties a; after a in input order, IoU 0.90: suppressed
    kept, suppressed = polygon_nms([b, d, a, c, e], 0.5)
    assert [k.score for k in kept] == [0.95, 0.9, 0.7]
    assert kept[1] is a and kept[2] is d
    assert suppressed == 2
    assert polygon_nms([], 0.5) == ([], 0)


def test_lexicon_rule():
    lex = Lexicon(["Hello", "WORLD", "café", ""])
    assert lex.correct("hello") == "Hello"  # distance 0 after upper-casing, original spelling kept
    assert lex.correct("HELLQ") == "Hello"  # distance 1: corrected
    assert lex.correct("worl") == "WORLD"  # one deletion
    assert lex.correct("HEXXO") is None  # distance 2: dropped
    assert lex.correct("cafe") == "café"  # é vs e: one substitution
    assert lex.correct("CAFÉ") == "café"
    assert lex.correct("cfe") is None  # a deletion and a substitution: 2
    assert Lexicon([]).correct("hello") is None


def test_lexicon_dir_reads_per_image_files_and_flags_missing_ones(tmp_path):
    (tmp_path / "voc_img_1.txt").write_text("STOP\nGO\n")
    lexicons = Lexicons(folder=str(tmp_path))
    lex, missing = lexicons.for_image("img_1.jpg")
    assert lex.correct("st0p") == "STOP" and not missing
    lex, missing = lexicons.for_image("img_2.jpg")
    assert missing and lex.correct("STOP") is None


def test_degenerate_polygons_are_dropped_and_counted():
    image = np.zeros((40, 40, 3), np.uint8)
    dets = [Detection(square(2, 2, 20), 0.9), Detection(np.array([[0, 0], [10, 0], [20, 0], [30, 0.0]]), 0.8)]
    crops, kept, dropped = crop_detections(image, dets)
    assert len(crops) == 1 and kept == dets[:1]
    assert crops[0].shape == (21, 21, 3)  # vertices are pixel centres: 20 px side -> 21 samples
    assert dict(dropped) == {"area below 4 px^2": 1}


@pytest.mark.slow  # the shared Ray run (module fixture)
def test_swapped_models_are_refused_before_ray_starts(spotted):
    from typer.testing import CliRunner

    from pipelines.cli import app

    root = spotted["root"]
    result = CliRunner().invoke(
        app, ["spot", "--det", str(root / "rec"), "--rec", str(root / "det"), "--images", str(spotted["images"]),
              "--out", str(root / "swapped"), "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "a recogniser, not a detector" in result.output
    assert not (root / "swapped").exists()


@pytest.mark.slow  # the shared Ray run (module fixture)
def test_lexicon_corrects_or_drops_the_pipeline_readings(spotted, tmp_path):
    """A lexicon holding image 1's reading with one character changed (and upper-cased): image 1's word comes
    back as the lexicon's spelling, image 2's different reading is dropped and counted."""
    from pipelines.spot import SpotSettings, spot_images_local

    first, second = spotted["local"][0], spotted["local"][1]
    reading = first.spots[0].text
    assert reading and reading != second.spots[0].text
    word = ("x" if reading[0] != "x" else "y") + reading[1:].upper()  # distance 1 after case folding
    (tmp_path / "words.txt").write_text(f"{word}\n")
    root = spotted["root"]
    paths = [spotted["images"] / first.name, spotted["images"] / second.name]
    got = spot_images_local(str(root / "det"), str(root / "rec"), paths, SpotSettings(long_side=SIDE, short_side=SIDE),
                            lexicons=Lexicons(file=str(tmp_path / "words.txt")))  # fmt: skip
    assert [s.text for s in got[0].spots] == [word]
    assert got[1].spots == [] and got[1].lexicon_dropped == len(second.spots)


def test_images_are_listed_from_a_bucket_with_names_relative_to_the_prefix(s3_env):
    from pipelines.spot import list_images, relative_name
    from pipelines.storage import StorageError

    s3_env.create_bucket("photos")
    client = s3_env.client()
    for key in ("batch/a/img_2.JPG", "batch/img_1.png", "batch/notes.txt", "other/img_3.jpg", "text/notes.txt"):
        client.put_object(Bucket="photos", Key=key, Body=b"x")
    loc, paths = list_images("s3://photos/batch")
    assert paths == ["photos/batch/a/img_2.JPG", "photos/batch/img_1.png"]  # by suffix, case-insensitive
    assert [relative_name(p, loc.path) for p in paths] == ["a/img_2.JPG", "img_1.png"]
    with pytest.raises(ValueError, match="no image files"):
        list_images("s3://photos/text")
    with pytest.raises(StorageError):
        list_images("s3://photos/missing")
