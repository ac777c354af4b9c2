"""Cross-dataset evaluation: config checks, and a 2 x 2 hmean matrix logged to MLflow (table + heatmap PNG).

The two models are tiny TCM-DB checkpoints whose probability branch is biased to say "text" everywhere (`hot`)
or nowhere (`cold`); the two eval sets are synthetic IC15-format images (`synth`, small words) and images whose
only ground-truth box covers the whole image (`full`). So only (hot, full) scores high: a matrix with rows or
columns swapped, or labels attached to the wrong cells, reads differently.
"""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import typer
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipelines.config import ConfigError, DatasetRef, load_config
from pipelines.cross_eval import cross_eval_command, format_matrix, load_cross_eval

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny_cpu.yaml"


def test_config_errors_and_set(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            models:
              - {label: a, uri: /m/a}
              - {label: a, uri: /m/b}
            datasets:
              - {label: d, uri: /d, splitt: test}
            """
        )
    )
    with pytest.raises(ConfigError) as err:
        load_cross_eval(path)
    assert f"{path}:5: datasets[0].splitt: unknown key" in str(err.value)
    with pytest.raises(ConfigError, match=r"models: labels must be unique \(repeated: a\)"):
        load_cross_eval(path, ["datasets.0={label: d, uri: /d}"])
    cfg = load_cross_eval(path, ["datasets.0={label: d, uri: /d}", "models.1.label=b", "set.eval.protocol=deteval"])
    assert [m.label for m in cfg.models] == ["a", "b"] and cfg.datasets[0].split == "test"
    assert cfg.set == {"eval.protocol": "deteval"}


def test_a_row_is_a_model_or_a_spotting_pair(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({"models": [{"label": "p", "det": "/m/d"}], "datasets": [{"label": "d", "uri": "/d"}]}))
    with pytest.raises(ConfigError, match=r"model 'p': give `uri` \(a model\) or both `det` and `rec`"):
        load_cross_eval(path)
    with pytest.raises(ConfigError, match=r"model 'p': give `uri`"):
        load_cross_eval(path, ["models.0.uri=/m/x"])  # a model and half a pair
    cfg = load_cross_eval(path, ["models.0.rec=/m/r"])
    assert cfg.models[0].metric == "test/e2e/hmean" and cfg.models[0].describe() == "/m/d + /m/r"


def test_example_yaml_reads_the_working_folder_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TCM_WORK", str(tmp_path))
    cfg = load_cross_eval(REPO / "jobs" / "pipelines" / "cross_eval_demo.yaml")
    assert [(d.uri, d.split) for d in cfg.datasets] == [(f"{tmp_path}/data", "test"), (f"{tmp_path}/data", "train")]
    assert cfg.models[0].uri == "models:/tcm-demo-tiny@champion"


def test_printed_table_keeps_rows_and_columns():
    text = format_matrix(["ic15", "td500"], ["ctw", "tt"], [[0.5, 0.25], [0.125, 1.0]])
    lines = text.splitlines()
    assert lines[0].split()[-2:] == ["ctw", "tt"]
    assert lines[1].split() == ["ic15", "0.5000", "0.2500"] and lines[2].split() == ["td500", "0.1250", "1.0000"]


# ------------------------------------------------------------------------------------------------ the matrix


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_local) -> dict[str, str]:
    """Three checkpoints (detectors hot and cold, a recogniser) and two ingested eval sets (synth, full)."""
    import dataclasses

    import ray

    from pipelines.checkpoint import save_checkpoint
    from pipelines.ingest import ingest
    from pipelines.spot import spot_images_local
    from tcm.build import build_detector
    from tcm.data.formats import get_format
    from tcm.data.synth import write_dataset
    from tcm.recognition.build import build_recognizer
    from tcm.recognition.charset import CHARSET_36
    from tcm.recognition.config import RecognizerConfig
    from tcm.types import Instance

    ray.data.DataContext.get_current().enable_progress_bars = False
    root = tmp_path_factory.mktemp("cross")
    cfg = load_config(TINY)
    out: dict[str, str] = {}
    for label, bias in (("hot", 20.0), ("cold", -20.0)):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_detector(cfg.detector(), pretrained=False)
        with torch.no_grad():
            model.head.prob[-1].bias.fill_(bias)  # logits of P: sigmoid(+20) = 1 everywhere, sigmoid(-20) = 0
        save_checkpoint(root / label, model, cfg.detector(), meta={"epoch": 0}, experiment=cfg.model_dump(mode="json"))
        out[label] = str(root / label)

    write_dataset("icdar2015", root / "raw-synth", n=2, seed=1, split="test", height=128, width=128)
    form = get_format("icdar2015")
    full = root / "raw-full" / "test"
    (full / "images").mkdir(parents=True)
    (full / "annotations").mkdir(parents=True)
    rng = np.random.default_rng(0)
    whole = np.array([[2, 2], [125, 2], [125, 125], [2, 125]], dtype=np.float64)  # (4, 2): the whole 128 px image
    names = [form.image_name(str(k), ".jpg") for k in (1, 2)]
    for name in names:
        cv2.imwrite(str(full / "images" / name), rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
    # a random recogniser (lowercase alphanumerics) paired with `hot`: each `full` word's transcription is what the
    # pair reads there, so the pair's end-to-end hmean is 1 on `full` (box IoU 124^2 / 128^2) and 0 on `synth`
    rec_cfg = dataclasses.replace(RecognizerConfig.tiny(), charset=CHARSET_36)
    save_checkpoint(root / "rec", build_recognizer(rec_cfg, pretrained=False), rec_cfg)
    out["rec"] = str(root / "rec")
    spotted = spot_images_local(out["hot"], out["rec"], [full / "images" / n for n in names])
    for name, result in zip(names, spotted, strict=True):
        (reading,) = [s.text for s in result.spots]  # the hot detector's one whole-image box
        assert reading and result.name == name
        (full / "annotations" / form.annotation_name(name)).write_bytes(form.write([Instance(whole, text=reading)]))
    for label in ("synth", "full"):
        ingest("icdar2015", str(root / f"raw-{label}" / "test"), str(root / label), "test", progress=lambda _m: None)
        out[label] = str(root / label)
    return out


def _cross_eval_json(path: Path) -> tuple[Any, dict]:
    """`tcm cross-eval --config PATH --json`: the CLI result (exit code 0 asserted) and its JSON outcome."""
    app = typer.Typer()
    app.command()(cross_eval_command)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(app, ["--config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    return result, json.loads(result.output[result.output.index("{") :])


@pytest.mark.slow
@pytest.mark.integration
def test_matrix_matches_run_evaluation_and_is_logged_with_a_heatmap(tmp_path, world):
    from pipelines.evaluate import run_evaluation

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = tmp_path / "cross.yaml"
    path.write_text(yaml.safe_dump({
        "name": "hot-cold",
        "mlflow": {"tracking_uri": db, "experiment": "cross", "artifact_location": (tmp_path / "artifacts").as_uri()},
        "num_overlays": 0,
        "models": [{"label": "hot", "uri": world["hot"]}, {"label": "cold", "uri": world["cold"]}],
        "datasets": [{"label": "synth", "uri": world["synth"]}, {"label": "full", "uri": world["full"]}],
    }))  # fmt: skip
    result, outcome = _cross_eval_json(path)
    assert outcome["rows"] == ["hot", "cold"] and outcome["cols"] == ["synth", "full"]
    hmean = np.array(outcome["hmean"])
    assert hmean.shape == (2, 2)
    assert format_matrix(outcome["rows"], outcome["cols"], outcome["hmean"]) in result.output

    def direct(model: str, data: str) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = DatasetRef(uri=world[data], split="test")
            return run_evaluation(world[model], [ref], None, tracking_uri=db, num_overlays=0, log_to_mlflow=False).metrics["test/hmean"]

    assert hmean[0, 1] == direct("hot", "full")
    others = [hmean[0, 0], hmean[1, 0], hmean[1, 1]]
    assert hmean[0, 1] > 0.5 and max(others) < hmean[0, 1]  # only (hot, full) scores: a swap would show

    client = MlflowClient(db)
    run = client.get_run(outcome["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "hot-cold"
    assert run.data.metrics["test/hmean/hot/full"] == hmean[0, 1]
    assert run.data.tags["mlflow.source.name"] and {i.dataset.name for i in run.inputs.dataset_inputs}
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "cross_eval")}
    assert {"cross_eval/hmean_heatmap.png", "cross_eval/hmean.json", "cross_eval/hmean.csv"} <= logged
    png = Path(client.download_artifacts(run.info.run_id, "cross_eval/hmean_heatmap.png", str(tmp_path)))
    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "cross_eval/hmean.json", str(tmp_path))).read_text())
    assert table["columns"] == ["model", "synth", "full"]  # mlflow.log_table's split layout: columns + data rows
    assert table["data"] == [["hot", *hmean[0]], ["cold", *hmean[1]]]
    exp = client.get_experiment_by_name("cross")
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert sorted(c.info.run_id for c in children) == sorted(c["eval_run_id"] for c in outcome["cells"])
    assert len(children) == 4


@pytest.mark.slow
@pytest.mark.integration
def test_spotting_pair_cells_are_end_to_end_hmean(tmp_path, world):
    """A pair row's cells are its end-to-end hmean: 1 on `full`, whose transcriptions are the pair's own readings
    (its detection hmean, logged in the cell's run, is not what the matrix shows)."""
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = tmp_path / "cross.yaml"
    path.write_text(yaml.safe_dump({
        "name": "pairs", "mlflow": {"tracking_uri": db, "experiment": "pairs"}, "num_overlays": 0,
        "models": [{"label": "hot-rec", "det": world["hot"], "rec": world["rec"]}],
        "datasets": [{"label": "full", "uri": world["full"]}],  # one cell: the matrix layout is the test above's
    }))  # fmt: skip
    _, outcome = _cross_eval_json(path)
    assert outcome["hmean"] == [[1.0]]
    cells = {c["dataset"]: c for c in outcome["cells"]}
    assert cells["full"]["metric"] == "test/e2e/hmean" and cells["full"]["precision"] == cells["full"]["recall"] == 1.0
    client = MlflowClient(db)
    run = client.get_run(outcome["run_id"])
    assert run.data.metrics["test/e2e/hmean/hot-rec/full"] == 1.0 and "test/hmean/hot-rec/full" not in run.data.metrics
    assert run.data.params["model.hot-rec"] == f"{world['hot']} + {world['rec']}"
    full_eval = client.get_run(cells["full"]["eval_run_id"])  # the cell's own run: detection beside end to end
    assert full_eval.data.metrics["test/e2e/hmean"] == 1.0 and full_eval.data.metrics["test/hmean"] > 0.5
    assert full_eval.data.params["rec_uri"] == world["rec"]
