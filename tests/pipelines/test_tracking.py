"""MLflow conventions every run-making stage shares (pipelines/tracking.py), on a local sqlite store."""

from __future__ import annotations

import json

from mlflow import MlflowClient

from pipelines import registry, tracking
from pipelines.config import DatasetRef


def test_runs_carry_source_tags_dataset_inputs_and_the_training_view(tmp_path):
    folder = tmp_path / "synth"
    folder.mkdir()
    sha = "ab" * 32
    (folder / "manifest.json").write_text(json.dumps({"sha256": sha, "splits": {"train": {}, "val": {}}}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = registry.ensure_experiment(uri, "conventions", (tmp_path / "artifacts").as_uri())
    run_id, _ = registry.get_or_create_run(uri, experiment_id, "key", "a run")

    # two splits of one folder share its manifest digest: both must still show, each with its own context
    tracking.log_datasets(uri, run_id, [DatasetRef(uri=str(folder), split="train"), DatasetRef(uri=str(folder), split="val")])
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    contexts = {
        next(t.value for t in i.tags if t.key == tracking.DATA_CONTEXT_TAG): i for i in run.inputs.dataset_inputs
    }
    assert sorted(contexts) == ["train", "val"]
    assert {i.dataset.digest for i in contexts.values()} == {sha[:36]}
    assert contexts["val"].dataset.name == "synth/val" and str(folder) in contexts["val"].dataset.source
    assert all(any(t.key == tracking.MANIFEST_SHA_TAG and t.value == sha for t in i.tags) for i in contexts.values())

    assert run.data.tags["mlflow.source.name"] and run.data.tags["mlflow.source.type"] == "LOCAL"
    assert run.data.tags.get("mlflow.source.git.commit") == tracking.git_commit()  # None outside a checkout
    assert client.get_experiment(experiment_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"

    client.delete_experiment_tag(experiment_id, tracking.EXPERIMENT_KIND_TAG)  # an experiment made before the tag
    assert registry.ensure_experiment(uri, "conventions") == experiment_id
    assert client.get_experiment(experiment_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
