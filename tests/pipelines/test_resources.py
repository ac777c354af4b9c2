"""Fail fast on resources that can never come: what a run asks for against what the cluster has or could add."""

from __future__ import annotations

import pytest

from pipelines.config import ExperimentConfig
from pipelines.resources import UNLIMITED, Ask, NodeShape, Unschedulable, shortfall, training_ask

STACK = [NodeShape(1, 0), NodeShape(2, 0), NodeShape(2, 0)]  # the local stack: head 1 CPU + 2 workers of 2 CPUs


def test_production_ask_on_the_local_stack_says_what_was_asked_and_what_exists():
    cfg = ExperimentConfig.model_validate({"name": "ic15-db", "train": {"use_gpu": True, "num_workers": 8}})
    reason = shortfall(training_ask(cfg), STACK)
    assert reason == (
        "training 'ic15-db' can never start: it asks for 8 worker(s) x {CPU: 1, GPU: 1} (8 CPU, 8 GPU in all, at "
        "most 0 worker(s) fit); the cluster has 3 node(s) with 5 CPU, 0 GPU and no autoscaler to add more"
    )


def test_a_run_that_fits_passes():
    assert shortfall(Ask("t", 2, 1.0, 0.0), STACK) is None
    assert shortfall(Ask("t", 4, 1.0, 0.0), STACK) is None  # 1 + 2 + 2 CPUs hold four 1-CPU workers


def test_workers_are_placed_whole_on_one_node():
    # 5 CPUs in all, but no node holds a 3-CPU worker
    reason = shortfall(Ask("t", 1, 3.0, 0.0), STACK)
    assert reason is not None and "at most 0 worker(s) fit" in reason
    # 4 free CPUs would do by the sum, but two 2-CPU workers fit on the 2-CPU nodes only: a third cannot
    assert "at most 2 worker(s) fit" in shortfall(Ask("t", 3, 1.5, 0.0), STACK)


def test_extra_cpus_of_a_sweep_driver_count():
    assert shortfall(Ask("s", 5, 1.0, 0.0), STACK) is None
    reason = shortfall(Ask("s", 5, 1.0, 0.0, extra_cpus=0.25), STACK)
    assert reason is not None and "(5.25 CPU, 0 GPU in all" in reason


def test_an_autoscaler_that_can_add_gpu_nodes_makes_the_ask_possible():
    groups = [NodeShape(8, 1, count=8, scalable=True)]
    assert shortfall(Ask("t", 8, 1.0, 1.0), STACK + groups) is None
    too_many = shortfall(Ask("t", 9, 1.0, 1.0), STACK + groups)
    assert too_many is not None and too_many.endswith("its autoscaler could add up to 64 CPU, 8 GPU")
    assert shortfall(Ask("t", 64, 1.0, 1.0), STACK + [NodeShape(4, 1, UNLIMITED, scalable=True)]) is None


def test_unschedulable_is_a_config_error_so_the_commands_exit_1_with_one_line():
    from pipelines.config import ConfigError

    assert issubclass(Unschedulable, ConfigError)


@pytest.mark.integration
def test_cluster_nodes_reads_the_connected_cluster(ray_local):
    from pipelines.resources import cluster_nodes, require

    nodes = cluster_nodes()
    assert sum(n.cpus for n in nodes) == 2 and all(not n.scalable for n in nodes)  # ray_local: 2 CPUs, no autoscaler
    require(Ask("fits", 2, 1.0, 0.0))
    with pytest.raises(Unschedulable, match=r"asks for 1 worker\(s\) x \{CPU: 1, GPU: 1\}.* 0 GPU and no autoscaler"):
        require(Ask("gpu run", 1, 1.0, 1.0))


@pytest.mark.integration
def test_gpu_training_on_a_cpu_cluster_fails_at_once_and_marks_its_run_failed(tmp_path, ray_local):
    from pipelines.train import run_training
    from tests.pipelines.test_train import runs_of, synth_dataset, tiny_config

    data = {"train": synth_dataset(tmp_path, "train", 2, seed=1), "val": synth_dataset(tmp_path, "val", 1, seed=2)}
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tiny_config(data, tracking_uri, str(tmp_path / "runs"), "wants-gpus", "train.use_gpu=true", "train.num_workers=8")
    with pytest.raises(Unschedulable) as err:
        run_training(cfg)  # Ray would otherwise wait for ever for 8 GPUs
    assert str(err.value).startswith("training 'wants-gpus' can never start: it asks for 8 worker(s) x {CPU: 0.5, GPU: 1}")
    assert "\n" not in str(err.value)
    (run,) = runs_of(tracking_uri, "wants-gpus")  # in its own experiment
    assert run.info.status == "FAILED"
    assert not (tmp_path / "runs" / "wants-gpus").exists() or not any((tmp_path / "runs" / "wants-gpus").rglob("checkpoint_*"))
