"""Workflows: YAML schema and --set, stage records, resume at the first unfinished stage, one MLflow parent run.

The fast tests run cheap `synth` stages; the integration test runs ingest -> train tiny -> evaluate on a local
2-CPU Ray with a sqlite MLflow store in tmp_path, the evaluate stage failing the first time.
"""

from __future__ import annotations

import json
import textwrap
import warnings
from collections import Counter
from pathlib import Path

import pytest
import typer
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipelines import workflow
from pipelines.config import ConfigError, load_config
from pipelines.workflow import load_workflow, pipeline_run_command

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny_cpu.yaml"
DEMO = REPO / "jobs" / "pipelines" / "demo_tiny.yaml"


def cli(*args: str):
    """`tcm pipeline run ARGS`, Ray's and MLflow's warnings silenced (the output is what the tests read)."""
    app = typer.Typer()
    app.command()(pipeline_run_command)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(app, list(args))


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def record(storage: Path, name: str, stage: str) -> dict:
    return json.loads((storage / name / "stages" / f"{stage}.json").read_text())


@pytest.fixture
def count_stages(monkeypatch) -> Counter:
    """Counts run_stage calls per stage name (the real stage still runs)."""
    calls: Counter = Counter()
    real = workflow.run_stage

    def counting(stage, ctx):
        calls[stage.name] += 1
        return real(stage, ctx)

    monkeypatch.setattr(workflow, "run_stage", counting)
    return calls


def workflow_runs(tracking_uri: str, experiment: str) -> list:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return list(client.search_runs([exp.experiment_id], filter_string="tags.`tcm.kind` = 'workflow'"))


# ------------------------------------------------------------------------------------------------ schema


def test_demo_yaml_loads_with_vars_from_env_and_set(monkeypatch, tmp_path):
    monkeypatch.setenv("TCM_WORK", str(tmp_path / "from-env"))
    wf = load_workflow(DEMO)
    assert wf.storage == f"{tmp_path}/from-env/workflows"
    assert [s.kind for s in wf.stages] == ["synth", "ingest", "ingest", "train", "evaluate", "register"]

    wf = load_workflow(DEMO, [f"vars.work={tmp_path}/w", "train.set.optim.lr=0.01", "register.alias=staging"])
    train = next(s for s in wf.stages if s.name == "train")
    assert train.set["optim.lr"] == 0.01  # one dotted key of the stage's `set`, not a nested section
    assert train.set["data.train"] == [{"uri": f"{tmp_path}/w/data", "split": "train"}]
    assert wf.stages[-1].alias == "staging" and wf.stages[-1].from_ == "train"


def test_schema_errors_name_the_stage_and_line(tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            name: bad
            storage: x
            stages:
              - name: data
                kind: ingest
                format: icdar2015
                src: a
                dst: b
                split: train
                shards: 3
              - name: eval
                kind: evaluate
                from: data
                data: [{uri: b}]
            """
        )
    )
    with pytest.raises(ConfigError) as err:
        load_workflow(path)
    assert f"{path}:10: stages[data].shards: unknown key" in str(err.value)

    path.write_text(path.read_text().replace("    shards: 3\n", ""))
    with pytest.raises(ConfigError, match=r"wf.yaml:10: stages\[1\] \(eval\): from: 'data' must name an earlier train or tune"):
        load_workflow(path)  # an ingest stage has no model
    with pytest.raises(ConfigError, match=r"'nope' is neither a top-level key .* nor a stage \(stages: data, eval\)"):
        load_workflow(path, ["nope.x=1"])
    dup = write_yaml(tmp_path / "dup.yaml", {"name": "d", "storage": "x", "stages": [
        {"name": "s", "kind": "synth", "format": "icdar2015", "out": "o"},
        {"name": "s", "kind": "synth", "format": "icdar2015", "out": "o"},
    ]})  # fmt: skip
    with pytest.raises(ConfigError, match=r"stage name 's' is used twice"):
        load_workflow(dup)


# ------------------------------------------------------------------------------------------------ runner (cheap stages)


def test_default_mlflow_store_lives_under_the_workflow_storage(tmp_path, ray_local, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    path = write_yaml(tmp_path / "wf.yaml", {
        "name": "store", "vars": {"work": str(tmp_path / "work")}, "storage": "${work}/records",
        "stages": [{"name": "s", "kind": "synth", "format": "icdar2015", "out": "${work}/raw", "splits": {"train": 1}}],
    })  # fmt: skip
    result = cli("--config", str(path))
    assert result.exit_code == 0, result.output
    db = tmp_path / "work" / "records" / "mlflow.db"
    assert db.is_file() and not (cwd / "mlflow.db").exists()
    assert json.loads((tmp_path / "work" / "records" / "store" / "workflow.json").read_text())["tracking_uri"] == f"sqlite:///{db}"


def test_failed_stage_is_recorded_and_a_rerun_resumes_there(tmp_path, ray_local, count_stages):
    db = tmp_path / "mlflow.db"
    storage = tmp_path / "records"
    path = write_yaml(tmp_path / "wf.yaml", {
        "name": "cheap",
        "storage": str(storage),
        "mlflow": {"tracking_uri": f"sqlite:///{db}", "experiment": "cheap"},
        "stages": [
            {"name": "first", "kind": "synth", "format": "icdar2015", "out": str(tmp_path / "a"), "splits": {"train": 1}},
            {"name": "second", "kind": "synth", "format": "no-such-format", "out": str(tmp_path / "b"), "splits": {"t": 1}},
            {"name": "third", "kind": "synth", "format": "td500", "out": str(tmp_path / "c"), "splits": {"t": 1}},
        ],
    })  # fmt: skip

    result = cli("--config", str(path))
    assert result.exit_code == 1
    failed = record(storage, "cheap", "second")
    assert failed["status"] == "failed" and "no-such-format" in failed["error"] and "\n" not in failed["error"]
    assert f"stage second failed: {failed['error']}" in result.output
    assert record(storage, "cheap", "first")["status"] == "done"
    assert not (storage / "cheap" / "stages" / "third.json").exists()
    assert count_stages == Counter({"first": 1, "second": 1})
    (parent,) = workflow_runs(f"sqlite:///{db}", "cheap")
    assert parent.info.status == "FAILED" and parent.data.tags["stage.second.status"] == "failed"
    first_done = record(storage, "cheap", "first")

    result = cli("--config", str(path), "--set", "second.format=icdar2015")
    assert result.exit_code == 0, result.output
    assert f"skipping first: done at {first_done['finished_at']}" in result.output
    assert record(storage, "cheap", "first") == first_done  # not executed again
    assert record(storage, "cheap", "second")["attempts"] == 2 and record(storage, "cheap", "third")["attempts"] == 1
    assert (tmp_path / "b" / "t" / "images").is_dir() and (tmp_path / "c" / "t" / "images").is_dir()
    assert count_stages == Counter({"first": 1, "second": 2, "third": 1})
    (again,) = workflow_runs(f"sqlite:///{db}", "cheap")  # the same parent run, resumed
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert {again.data.tags[f"stage.{s}.status"] for s in ("first", "second", "third")} == {"done"}
    state = json.loads((storage / "cheap" / "workflow.json").read_text())
    assert state["parent_run_id"] == parent.info.run_id
    assert [a["status"] for a in state["attempts"]] == ["failed", "done"]

    result = cli("--config", str(path), "--set", "second.format=icdar2015", "--rerun-from", "second")
    assert result.exit_code == 0, result.output
    assert count_stages == Counter({"first": 1, "second": 3, "third": 2})  # second and everything after it


# ------------------------------------------------------------------------------------------------ ingest -> train -> evaluate


@pytest.mark.slow
@pytest.mark.integration
def test_three_stage_workflow_resumes_at_evaluate_under_one_parent_run(tmp_path, ray_local, count_stages):
    import ray

    from tcm.data.synth import write_dataset

    ray.data.DataContext.get_current().enable_progress_bars = False
    write_dataset("icdar2015", tmp_path / "raw", n=6, seed=3, split="train", height=128, width=128)
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "records"
    data = str(tmp_path / "data")
    path = write_yaml(tmp_path / "wf.yaml", {
        "name": "tiny3",
        "vars": {"work": str(tmp_path)},
        "storage": "${work}/records",
        "mlflow": {"tracking_uri": db, "experiment": "tiny3"},
        "stages": [
            {"name": "ingest", "kind": "ingest", "format": "icdar2015", "src": "${work}/raw/train", "dst": data,
             "split": "train"},
            {"name": "train", "kind": "train", "config": str(TINY), "set": {
                "name": "tiny3", "data.train": [{"uri": data, "split": "train"}], "data.batch_size": 2,
                "train.storage_path": "${work}/runs", "train.epochs": 1, "train.steps_per_epoch": 2,
                "train.num_workers": 1, "train.num_overlays": 0}},
            {"name": "evaluate", "kind": "evaluate", "from": "train",
             "data": [{"uri": "${work}/no-such-data", "split": "train"}]},
            {"name": "register", "kind": "register", "from": "train", "registered_model": "tiny3", "alias": "best",
             "min_hmean": 0},  # registration plumbing; the floor itself: tests/pipelines/test_registry.py
        ],
    })  # fmt: skip

    first = cli("--config", str(path))
    assert first.exit_code == 1, first.output
    failed = record(storage, "tiny3", "evaluate")
    assert failed["status"] == "failed" and "no-such-data" in failed["error"]
    assert f"stage evaluate failed: {failed['error']}" in first.output
    ingested, trained = record(storage, "tiny3", "ingest"), record(storage, "tiny3", "train")
    assert ingested["status"] == trained["status"] == "done" and ingested["outputs"]["rows"] == 6
    assert trained["outputs"]["model_uri"] and trained["outputs"]["metrics"]["epoch"] == 1

    second = cli("--config", str(path), "--set", f"evaluate.data=[{{uri: '{data}', split: train}}]")
    assert second.exit_code == 0, second.output
    assert "skipping ingest: done at" in second.output and "skipping train: done at" in second.output
    assert count_stages == Counter({"ingest": 1, "train": 1, "evaluate": 2, "register": 1})
    assert record(storage, "tiny3", "ingest") == ingested and record(storage, "tiny3", "train") == trained
    evaluated = record(storage, "tiny3", "evaluate")
    assert evaluated["status"] == "done" and evaluated["attempts"] == 2
    assert evaluated["outputs"]["model_uri"] == trained["outputs"]["model_uri"]  # `from: train` resolved
    assert 0.0 <= evaluated["outputs"]["metrics"]["test/hmean"] <= 1.0

    client = MlflowClient(db)
    (parent,) = workflow_runs(db, "tiny3")  # one parent run across both attempts
    assert parent.info.run_id == json.loads((storage / "tiny3" / "workflow.json").read_text())["parent_run_id"]
    assert parent.info.status == "FINISHED"
    assert {parent.data.tags[f"stage.{s}.status"] for s in ("ingest", "train", "evaluate", "register")} == {"done"}
    assert parent.data.metrics["test/evaluate/hmean"] == evaluated["outputs"]["metrics"]["test/hmean"]
    exp = client.get_experiment_by_name("tiny3")
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_id = {r.info.run_id: r for r in children}
    assert set(by_id) == {trained["outputs"]["run_id"], evaluated["outputs"]["mlflow_run_id"]}
    assert by_id[trained["outputs"]["run_id"]].info.status == "FINISHED"

    version = client.get_model_version_by_alias("tiny3", "best")
    assert version.source == trained["outputs"]["model_uri"] or version.tags["model_uri"] == trained["outputs"]["model_uri"]
    assert record(storage, "tiny3", "register")["outputs"]["version"] == str(version.version)
    third = cli("--config", str(path), "--set", f"evaluate.data=[{{uri: '{data}', split: train}}]", "--rerun-from", "register")
    assert third.exit_code == 0, third.output
    assert count_stages["register"] == 2 and count_stages["evaluate"] == 2
    assert [v.version for v in client.search_model_versions("name = 'tiny3'")] == [version.version]  # not registered twice


# ------------------------------------------------------------------------------------------------ spot stage


def test_spot_stage_models_must_be_earlier_model_stages_or_uris(tmp_path):
    stages = [
        {"name": "raw", "kind": "synth", "format": "icdar2015", "out": "o"},
        {"name": "spot", "kind": "spot", "det": "raw", "rec": "models:/r@champion", "images": "o/test/images", "out": "s"},
    ]
    path = write_yaml(tmp_path / "wf.yaml", {"name": "s", "storage": "x", "stages": stages})
    with pytest.raises(ConfigError, match=r"\(spot\): det: 'raw' is a synth stage, not an earlier train or tune stage"):
        load_workflow(path)
    stages[1] |= {"det": "checkpoints/det", "rec": "later"}
    write_yaml(path, {"name": "s", "storage": "x", "stages": [*stages, {"name": "later", "kind": "synth", "format": "icdar2015", "out": "o"}]})
    with pytest.raises(ConfigError, match=r"rec: 'later' is a later stage"):
        load_workflow(path)
    with pytest.raises(ConfigError, match=r"stages\[spot\]\.gpus: unknown key"):
        load_workflow(path, ["spot.rec=models:/r/1", "spot.gpus=1"])
    wf = load_workflow(path, ["spot.rec=models:/r/1"])
    assert wf.stages[1].kind == "spot" and wf.stages[1].protocol is None and wf.stages[1].det == "checkpoints/det"


@pytest.mark.slow
@pytest.mark.integration
def test_spot_stage_scores_its_submission_and_is_skipped_when_done(tmp_path, ray_local, count_stages):
    """synth -> spot (tiny random checkpoints, gt given): the recorded metrics are `tcm score`'s on the written
    submission, the parent run carries them, and a re-run skips both stages."""
    import ray
    import torch

    from pipelines.checkpoint import save_checkpoint
    from pipelines.score_spotting import score_spotting
    from tcm.build import build_detector
    from tcm.recognition.build import build_recognizer
    from tcm.recognition.config import RecognizerConfig

    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = load_config(TINY)  # the detector's recorded config: test scale 128, the synthetic images' size
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_checkpoint(tmp_path / "det", build_detector(cfg.detector(), pretrained=False), cfg.detector(),
                        experiment=cfg.model_dump(mode="json"))  # fmt: skip
        save_checkpoint(tmp_path / "rec", build_recognizer(RecognizerConfig.tiny(), pretrained=False), RecognizerConfig.tiny())
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "records"
    path = write_yaml(tmp_path / "wf.yaml", {
        "name": "spotwf", "vars": {"work": str(tmp_path)}, "storage": "${work}/records",
        "mlflow": {"tracking_uri": db, "experiment": "spotwf"},
        "stages": [
            {"name": "raw", "kind": "synth", "format": "icdar2015", "out": "${work}/raw", "splits": {"test": 3}},
            {"name": "spot", "kind": "spot", "det": "${work}/det", "rec": "${work}/rec", "images": "${work}/raw/test/images",
             "out": "${work}/spots", "gt": "${work}/raw/test/annotations"},
        ],
    })  # fmt: skip
    result = cli("--config", str(path))
    assert result.exit_code == 0, result.output
    done = record(storage, "spotwf", "spot")
    outputs = done["outputs"]
    assert done["status"] == "done" and outputs["images"] == 3 and outputs["skipped"] == 0
    assert sorted(p.name for p in (tmp_path / "spots" / "submission").iterdir()) == [f"res_img_{k}.txt" for k in (1, 2, 3)]
    assert len(list((tmp_path / "spots" / "overlays").glob("*.png"))) == 3
    lines = sum(len(p.read_text().splitlines()) for p in (tmp_path / "spots" / "submission").iterdir())
    assert outputs["words"] == lines > 0  # the detector found words: the score below matched real boxes
    expected = score_spotting(tmp_path / "raw" / "test" / "annotations", tmp_path / "spots" / "submission", "e2e")
    assert outputs["metrics"] == {f"e2e/{k}": expected[k] for k in ("hmean", "precision", "recall")}
    assert json.loads((tmp_path / "spots" / "score_e2e.json").read_text())["counts"] == expected["counts"]
    (parent,) = workflow_runs(db, "spotwf")
    assert parent.data.metrics["spot/spot/e2e/hmean"] == expected["hmean"]

    again = cli("--config", str(path))
    assert again.exit_code == 0, again.output
    assert "skipping spot: done at" in again.output
    assert count_stages == Counter({"raw": 1, "spot": 1}) and record(storage, "spotwf", "spot") == done
