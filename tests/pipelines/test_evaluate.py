"""Evaluation: scoring helpers, actor-pool batch inference (same answers as in-process), the CLI commands."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipelines.checkpoint import save_checkpoint
from pipelines.config import DatasetRef, load_config
from pipelines.evaluate import (
    PredRow,
    dets_from_json,
    dets_to_json,
    evaluate_command,
    predict_rows,
    run_evaluation,
    score_pairs,
)
from pipelines.predict import predict_command
from tcm.evaluation import evaluate
from tcm.types import Detection, Instance

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny_cpu.yaml"


def _square(x: float, y: float, s: float) -> np.ndarray:
    return np.array([[x, y], [x + s, y], [x + s, y + s], [x, y + s]], dtype=np.float64)  # (4, 2) clockwise


def test_score_pairs_perfect_and_empty_predictions(tmp_path):
    gt = [Instance(_square(10, 10, 20)), Instance(_square(50, 10, 20)), Instance(_square(10, 50, 20), ignore=True)]
    perfect = [PredRow("a", gt, [Detection(g.points, 0.9) for g in gt[:2]]), PredRow("b", gt[:1], [Detection(gt[0].points, 0.8)])]
    metrics = score_pairs(perfect, "iou", tmp_path / "perfect")
    assert metrics["hmean"] == metrics["precision"] == metrics["recall"] == 1.0 and metrics["images"] == 2
    assert len(json.loads((tmp_path / "perfect" / "per_image.json").read_text())) == 2
    assert (tmp_path / "perfect" / "threshold_curve.png").stat().st_size > 0
    assert metrics["sweep_best_threshold"] == pytest.approx(0.3)  # lowest threshold among the ties

    half = [PredRow("a", gt, [Detection(gt[0].points, 0.9)]), PredRow("b", gt[:1], [])]
    metrics = score_pairs(half, "iou")
    assert metrics["precision"] == 1.0 and metrics["recall"] == pytest.approx(1 / 3)


def test_detections_survive_the_json_column():
    dets = [Detection(_square(1.5, 2.25, 3), 0.875), Detection(np.array([[0, 0], [5, 0], [5, 1], [3, 4], [0, 1.0]]), 0.5)]
    back = dets_from_json(dets_to_json(dets))
    assert [d.score for d in back] == [0.875, 0.5]
    for a, b in zip(dets, back, strict=True):
        np.testing.assert_allclose(a.points, b.points)


# ------------------------------------------------------------------------------------------------ models and data


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny TCM-DB checkpoint (random weights, seeded) with the tiny config recorded beside it."""
    from tcm.build import build_detector

    cfg = load_config(TINY)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_detector(cfg.detector(), pretrained=False)
    folder = tmp_path_factory.mktemp("model") / "checkpoint"
    save_checkpoint(folder, model, cfg.detector(), meta={"epoch": 0}, experiment=cfg.model_dump(mode="json"))
    return folder


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> tuple[Path, Path]:
    """(raw images folder, ingested folder) of 3 synthetic IC15-format test images."""
    from tcm.data.synth import write_dataset

    root = tmp_path_factory.mktemp("testset")
    write_dataset("icdar2015", root / "raw", n=3, seed=5, split="test", height=128, width=160)
    return root / "raw", root / "ingested"


@pytest.fixture(scope="module")
def ingested(test_set, ray_local) -> str:
    import ray

    from pipelines.ingest import ingest

    ray.data.DataContext.get_current().enable_progress_bars = False
    raw, out = test_set
    ingest("icdar2015", str(raw), str(out), "test", progress=lambda _msg: None)
    return str(out)


def _app(command) -> typer.Typer:
    app = typer.Typer()
    app.command()(command)
    return app


# ------------------------------------------------------------------------------------------------ batch inference


@pytest.mark.slow
@pytest.mark.integration
def test_actor_pool_evaluation_matches_in_process_prediction(tmp_path, model_dir, ingested):
    from pipelines import registry
    from pipelines.train import eval_datasets
    from tcm.build import build_codec

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    refs = [DatasetRef(uri=ingested, split="test")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_evaluation(str(model_dir), refs, tracking_uri=tracking_uri, out_dir=tmp_path / "out", num_overlays=1)

    loaded = registry.load_model(str(model_dir))
    cfg = load_config(TINY)
    local = predict_rows(loaded.model, build_codec(loaded.detector.head), eval_datasets(cfg, refs), cfg, torch.device("cpu"))
    by_id = {r.id: r for r in local}
    assert sorted(r.id for r in outcome.rows) == sorted(by_id) and len(by_id) == 3
    assert sum(len(r.dets) for r in outcome.rows) > 0  # the comparison below is not between empty lists
    for row in outcome.rows:
        mine = by_id[row.id]
        assert len(row.dets) == len(mine.dets) and len(row.gt) == len(mine.gt)
        for a, b in zip(row.dets, mine.dets, strict=True):
            np.testing.assert_allclose(a.points, b.points, atol=0.01)
            assert a.score == pytest.approx(b.score, abs=1e-4)
    expected = evaluate([(r.gt, r.dets) for r in sorted(local, key=lambda r: r.id)])
    assert outcome.metrics["test/hmean"] == pytest.approx(expected.hmean)  # the names MLflow shows
    assert outcome.metrics["test/recall"] == pytest.approx(expected.recall)

    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["hmean"] == pytest.approx(expected.hmean)
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == 1
    run = MlflowClient(tracking_uri).get_run(outcome.mlflow_run_id)
    assert run.data.metrics["test/hmean"] == pytest.approx(expected.hmean)
    assert run.data.params["model_uri"] == str(model_dir)
    (data_input,) = run.inputs.dataset_inputs  # the evaluated split, with its manifest's digest
    assert data_input.dataset.digest == json.loads((Path(ingested) / "manifest.json").read_text())["sha256"][:36]
    assert [(t.key, t.value) for t in data_input.tags if t.key == "mlflow.data.context"] == [("mlflow.data.context", "test")]


@pytest.mark.slow
@pytest.mark.integration
def test_evaluate_command(tmp_path, model_dir, ingested):
    runner = CliRunner()
    out = tmp_path / "eval"
    result = runner.invoke(
        _app(evaluate_command), ["--model", str(model_dir), "--data", ingested, "--out", str(out), "--no-mlflow"]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output[result.output.index("{") :])
    assert 0.0 <= printed["test/hmean"] <= 1.0 and printed["test/images"] == 3 and printed["mlflow_run_id"] is None
    assert (out / "per_image.json").is_file()

    missing = tmp_path / "no-such-checkpoint"
    result = runner.invoke(_app(evaluate_command), ["--model", str(missing), "--data", ingested, "--no-mlflow"])
    assert result.exit_code == 1 and str(missing) in result.output


# ------------------------------------------------------------------------------------------------ predict


def test_predict_writes_json_submission_and_overlays(tmp_path, model_dir, test_set):
    raw, _ = test_set
    images = sorted(p for p in raw.rglob("*.jpg"))[:2]
    assert len(images) == 2
    out = tmp_path / "pred"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(_app(predict_command), [*map(str, images), "--model", str(model_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "predictions.json").read_text())
    assert [r["image"] for r in records] == [str(p) for p in images]
    for record, path in zip(records, images, strict=True):
        assert (record["width"], record["height"]) == (160, 128)
        for det in record["detections"]:
            pts = np.asarray(det["points"])  # (P, 2) in the image's own pixels
            assert pts.shape[1] == 2 and (pts[:, 0] <= 160).all() and (pts[:, 1] <= 128).all()
        submission = out / "submission" / f"res_{path.stem}.txt"
        assert len(submission.read_text().splitlines()) == len(record["detections"])
        assert (out / "overlays" / f"{path.stem}.png").is_file()
