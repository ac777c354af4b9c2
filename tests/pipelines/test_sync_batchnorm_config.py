"""`train.sync_batchnorm`: on by default exactly for multi-worker GPU training (issue #15 item 5)."""

import pytest

from pipelines.config import ConfigError, ExperimentConfig, TrainConfig


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ({}, False),
        ({"use_gpu": True}, False),  # one worker: nothing to synchronise
        ({"use_gpu": True, "num_workers": 2}, True),  # released: SyncBN under DDP
        ({"num_workers": 2}, False),  # CPU / gloo: torch's SyncBatchNorm runs on GPU tensors only
        ({"use_gpu": True, "num_workers": 4, "sync_batchnorm": False}, False),  # asked off
        ({"use_gpu": True, "sync_batchnorm": True}, True),  # asked on
    ],
)
def test_sync_batchnorm_default_and_override(train, expected):
    assert TrainConfig.model_validate(train).uses_sync_batchnorm() is expected


def test_sync_batchnorm_on_cpu_is_refused_by_key():
    with pytest.raises((ConfigError, ValueError), match="train.sync_batchnorm"):
        ExperimentConfig.model_validate({"model": {"preset": "tiny"}, "train": {"sync_batchnorm": True}})
