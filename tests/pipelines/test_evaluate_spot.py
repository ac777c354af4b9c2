"""`tcm evaluate --model DET --rec REC`: one MLflow run with detection, end-to-end, word-spotting and
recognition figures equal to `tcm score` on `tcm spot`'s files and to a hand loop over GT crops; the registry
keeps the pair as tags; the in-memory scorer is `tcm score`'s on hand-perturbed spots."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import typer
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipelines.config import DatasetRef, load_config
from pipelines.evaluate_spot import SpottedRows, score_spotted
from pipelines.spot import ImageSpots, Spot, gt_json, write_spots

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny_cpu.yaml"


def _number(name: str) -> str:
    return re.search(r"([0-9]+)", Path(name).name).group(1)  # img_12, gt_img_12.txt, res_img_12.txt -> 12


def _cli(*args: str):
    from pipelines.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """3 synthetic IC15-format test images with annotations (raw folder: test/images, test/annotations)."""
    from tcm.data.synth import write_dataset

    root = tmp_path_factory.mktemp("evalspot")
    write_dataset("icdar2015", root / "raw", n=3, seed=5, split="test", height=128, width=160)
    return root


@pytest.fixture(scope="module")
def models(synth) -> dict:
    """Tiny random detector (tiny_cpu config: 128 px test scale) and recogniser: checkpoint folders, and both
    logged and registered in a sqlite MLflow store (tcm-det version 1, tcm-rec@champion)."""
    import torch

    from pipelines import registry
    from pipelines.checkpoint import save_checkpoint
    from tcm.build import build_detector
    from tcm.recognition.build import build_recognizer
    from tcm.recognition.charset import CHARSET_36
    from tcm.recognition.config import RecognizerConfig

    cfg = load_config(TINY)
    rec_cfg = dataclasses.replace(RecognizerConfig.tiny(), charset=CHARSET_36)  # readings fit an annotation line
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = build_detector(cfg.detector(), pretrained=False)
        rec = build_recognizer(rec_cfg, pretrained=False)
    experiment = cfg.model_dump(mode="json")
    save_checkpoint(synth / "det", det, cfg.detector(), experiment=experiment)
    save_checkpoint(synth / "rec", rec, rec_cfg)
    uri = f"sqlite:///{synth / 'mlflow.db'}"
    exp = registry.ensure_experiment(uri, "models", (synth / "artifacts").as_uri())
    client = MlflowClient(uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det_uri = registry.log_model(uri, client.create_run(exp).info.run_id, det, cfg.detector(), experiment=experiment)
        rec_uri = registry.log_model(uri, client.create_run(exp).info.run_id, rec, rec_cfg)
    registry.register_version(uri, det_uri, "tcm-det")
    registry.register_model(uri, rec_uri, "tcm-rec", "champion")
    return {"det": synth / "det", "rec": synth / "rec", "tracking_uri": uri,
            "det_uri": "models:/tcm-det/1", "rec_uri": "models:/tcm-rec@champion"}  # fmt: skip


@pytest.fixture(scope="module")
def spotted_files(synth, models) -> dict:
    """What `tcm spot` writes for the pair on the raw images (the local loop, byte-identical to the Ray pipeline:
    test_spot.py), in synth/spots; then every spotted word is added to its image's ground truth as read, so the
    end-to-end scores below count real hits, not only zeros."""
    from pipelines.spot import Lexicons, SpotSettings, run_report, spot_images_local

    images = sorted((synth / "raw" / "test" / "images").iterdir())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = spot_images_local(str(models["det"]), str(models["rec"]), images)  # the registered versions' weights
    assert sum(len(r.spots) for r in local) > 0  # the detector finds something: the scores compare real matching
    write_spots(local, synth / "spots", polygons=False, report=run_report(local, SpotSettings(), Lexicons()))
    gt_dir = synth / "raw" / "test" / "annotations"
    for res in sorted((synth / "spots" / "submission").iterdir()):
        gt = gt_dir / res.name.replace("res_", "gt_")
        gt.write_text(gt.read_text() + res.read_text())  # appended: the original words keep their file order
    return {"local": local, "submission": synth / "spots" / "submission", "gt": gt_dir}


@pytest.fixture(scope="module")
def evaluated(synth, models, spotted_files, ray_local) -> dict:
    """Ingest the 3 images and run the pair evaluation once on Ray (the shared, expensive part)."""
    import ray

    from pipelines.evaluate import run_evaluation
    from pipelines.ingest import ingest

    ray.data.DataContext.get_current().enable_progress_bars = False
    ingest("icdar2015", str(synth / "raw"), str(synth / "ingested"), "test", progress=lambda _msg: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_evaluation(
            models["det_uri"], [DatasetRef(uri=str(synth / "ingested"), split="test")],
            tracking_uri=models["tracking_uri"], out_dir=synth / "eval", num_overlays=2, rec=models["rec_uri"],
        )  # fmt: skip
    run = MlflowClient(models["tracking_uri"]).get_run(outcome.mlflow_run_id)
    return {"outcome": outcome, "run": run, "out": synth / "eval"}


# ------------------------------------------------------------------------------------------------ the pipeline


@pytest.mark.slow  # the shared Ray evaluation (module fixture)
@pytest.mark.integration
def test_logged_spotting_scores_equal_tcm_score_on_the_tcm_spot_files(evaluated, spotted_files):
    """The run's e2e / word-spotting figures are `tcm score`'s on the submission `tcm spot` writes for the same
    models and images."""
    metrics = evaluated["run"].data.metrics
    assert metrics["test/e2e/recall"] > 0 and metrics["test/e2e/precision"] > 0  # the spotted words are hits
    for prefix, protocol in (("e2e", "e2e"), ("word_spotting", "word-spotting")):
        result = _cli("score", "--protocol", protocol, "--gt", str(spotted_files["gt"]),
                      "--pred", str(spotted_files["submission"]), "--json")  # fmt: skip
        assert result.exit_code == 0, result.output
        scored = json.loads(result.stdout)
        for key in ("hmean", "precision", "recall"):
            assert metrics[f"test/{prefix}/{key}"] == pytest.approx(scored[key], abs=1e-12)
        artifact = json.loads((evaluated["out"] / "spotting" / f"{prefix}.json").read_text())
        assert artifact["counts"] == scored["counts"]  # the same care GT, care detections and hits
        assert artifact["detection_only"] == pytest.approx(scored["detection_only"])
        per_file = {_number(k): v["det_care"] for k, v in scored["per_image"].items()}
        assert {_number(k): v["det_care"] for k, v in artifact["per_image"].items()} == per_file
    assert scored["counts"]["det_care"] > 0


@pytest.mark.slow  # the shared Ray evaluation (module fixture)
@pytest.mark.integration
def test_recognition_accuracy_equals_a_hand_loop_over_gt_crops(evaluated, synth, models):
    import pyarrow.parquet as pq
    import torch

    from pipelines import registry
    from pipelines.ingest import shard_uris
    from tcm.data.crops import crop_word
    from tcm.data.transforms import decode_image
    from tcm.evaluation_str import score_words
    from tcm.recognition.preprocess import preprocess

    model = registry.load_model(str(models["rec"])).model.eval()
    gt, pred = [], {}
    for uri in shard_uris(str(synth / "ingested"), "test"):
        for row in pq.read_table(uri.removeprefix("file://")).to_pylist():
            rgb = decode_image(row["image"])[:, :, ::-1]
            for i, (poly, text, ign) in enumerate(zip(row["polygons"], row["texts"], row["ignore"], strict=True)):
                if ign or text == "###" or not text:
                    continue
                crop = np.ascontiguousarray(crop_word(rgb, np.asarray(poly, dtype=np.float64)))
                with torch.inference_mode():
                    (reading,), _ = model.tokenizer.decode(model(preprocess([crop], model.cfg))["logits"])
                gt.append((f"{row['id']}#{i}", text))
                pred[f"{row['id']}#{i}"] = reading
    expected = score_words(gt, pred, charset=36)
    metrics = evaluated["run"].data.metrics
    assert expected.n > 5 and metrics["test/recognition/words"] == expected.n
    assert metrics["test/recognition/accuracy"] == pytest.approx(expected.accuracy)
    assert metrics["test/recognition/one_minus_ned"] == pytest.approx(expected.one_minus_ned)  # random readings: > 0
    assert expected.one_minus_ned > 0
    per_word = {r["id"]: r["pred"] for r in json.loads((evaluated["out"] / "recognition" / "per_word.json").read_text())}
    assert per_word == pred


@pytest.mark.slow  # the shared Ray evaluation (module fixture)
@pytest.mark.integration
def test_one_run_holds_detection_spotting_and_overlays(evaluated, models):
    run = evaluated["run"]
    metrics = run.data.metrics
    detection = json.loads((evaluated["out"] / "metrics.json").read_text())
    assert metrics["test/hmean"] == pytest.approx(detection["hmean"])  # detection as before, same run
    assert {"test/e2e/hmean", "test/word_spotting/hmean", "test/recognition/accuracy"} <= set(metrics)
    assert run.data.params["rec_uri"] == models["rec_uri"]
    client = MlflowClient(models["tracking_uri"])
    names = [a.path for a in client.list_artifacts(run.info.run_id, "evaluation/spots")]
    assert len(names) == 2 and all(n.endswith(".png") for n in names)
    from PIL import Image

    with Image.open(next((evaluated["out"] / "spots").iterdir())) as im:
        assert im.size == (160, 128)
    evaluations = client.search_runs([run.info.experiment_id], filter_string="tags.`tcm.kind` = 'evaluation'")
    assert [r.info.run_id for r in evaluations] == [run.info.run_id]  # ONE run for the pair


@pytest.mark.slow  # the shared Ray evaluation (module fixture)
@pytest.mark.integration
def test_registry_keeps_the_pair_as_tags(evaluated, models):
    from pipelines import registry

    tags = evaluated["run"].data.tags
    assert tags[registry.PAIR_DETECTOR_TAG] == "tcm-det/1"
    assert tags[registry.PAIR_RECOGNIZER_TAG] == "tcm-rec/1"  # @champion resolved to its version
    client = MlflowClient(models["tracking_uri"])
    assert client.get_model_version("tcm-det", "1").tags[registry.SPOT_RECOGNIZER_TAG] == "tcm-rec/1"
    assert client.get_model_version("tcm-rec", "1").tags[registry.SPOT_DETECTOR_TAG] == "tcm-det/1"


def test_tag_pair_refuses_a_pair_outside_the_registry(tmp_path):
    from pipelines import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert registry.registered_version(uri, "runs:/abc/model") is None
    assert registry.registered_version(uri, str(tmp_path)) is None
    assert registry.pair_run_tags(uri, "runs:/abc/model", str(tmp_path)) == {}
    with pytest.raises(ValueError, match="detector runs:/abc/model: not a registry URI"):
        registry.tag_pair(uri, "runs:/abc/model", "models:/tcm-rec/1")


def test_swapped_pair_is_refused_before_ray_starts(models, synth):
    from pipelines.evaluate import evaluate_command

    app = typer.Typer()
    app.command()(evaluate_command)
    common = ["--data", str(synth / "nothing-ingested"), "--tracking-uri", models["tracking_uri"], "--no-mlflow"]
    result = CliRunner().invoke(app, ["--model", str(models["rec"]), "--rec", str(models["det"]), *common])
    assert result.exit_code == 1 and f"--model {models['rec']}: a recogniser, not a detector" in result.output
    result = CliRunner().invoke(app, ["--model", str(models["det"]), "--rec", str(models["det"]), *common])
    assert result.exit_code == 1 and f"--rec {models['det']}: a detector, not a recogniser" in result.output


# ------------------------------------------------------------------------------------------------ the scorer


def test_in_memory_scores_are_tcm_scores_on_hand_perturbed_spots(synth, tmp_path):
    """GT words written back as spots, then: image 1's first care word misread, image 2's last care word
    missing, image 3's first care word submitted twice. Hand count with G care words: hits G - 2, care
    detections G - 1 + 1 = G, so P = R = (G - 2) / G; and the same figures from `tcm score` on the files."""
    from tcm.evaluation_e2e import parse_rrc_e2e

    gt_dir = synth / "raw" / "test" / "annotations"
    results, gts, G = [], {}, 0
    for k in (1, 2, 3):
        parsed = parse_rrc_e2e((gt_dir / f"gt_img_{k}.txt").read_text(), f"gt_img_{k}.txt")
        quads = parsed.polygons.flat.reshape(-1, 4, 2)  # (N, 4, 2)
        rid = f"icdar2015/test/img_{k}"
        gts[rid] = json.loads(gt_json(quads, parsed.texts, [t == "###" for t in parsed.texts]))
        spots = [Spot(q, 0.9 - 0.01 * i, t, 0.5) for i, (q, t) in enumerate(zip(quads, parsed.texts, strict=True)) if t != "###"]
        G += len(spots)
        assert len(spots) >= 2
        if k == 1:
            spots[0].text = "qqqqqqqq"  # misread: matched (consumed) but no hit
        elif k == 2:
            spots.pop()  # missed
        else:
            spots.append(Spot(spots[0].points.copy(), 0.1, spots[0].text, 0.5))  # duplicate, ranked last
        results.append(ImageSpots(rid, 160, 128, spots=spots))
    spotted = SpottedRows(results, gts, {rid: {"index": [], "text": [], "confidence": [], "degenerate": {}} for rid in gts})
    cfg = load_config(TINY)
    metrics = score_spotted(spotted, polygons=False, cfg=cfg, folder=tmp_path / "eval")
    assert metrics["e2e/precision"] == pytest.approx((G - 2) / G)
    assert metrics["e2e/recall"] == pytest.approx((G - 2) / G)
    assert metrics["recognition/words"] == 0.0
    write_spots([ImageSpots(f"img_{k}.jpg", 160, 128, spots=r.spots) for k, r in zip((1, 2, 3), results, strict=True)],
                tmp_path / "files", polygons=False, report={})  # fmt: skip
    from pipelines.score_spotting import score_spotting

    for prefix, protocol in (("e2e", "e2e"), ("word_spotting", "word-spotting")):
        scored = score_spotting(gt_dir, tmp_path / "files" / "submission", protocol)
        assert metrics[f"{prefix}/hmean"] == pytest.approx(scored["hmean"])
        assert metrics[f"{prefix}/precision"] == pytest.approx(scored["precision"])
        assert json.loads((tmp_path / "eval" / "spotting" / f"{prefix}.json").read_text())["counts"] == scored["counts"]
