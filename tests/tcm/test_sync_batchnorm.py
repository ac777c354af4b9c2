"""SyncBatchNorm conversion (issue #15 item 5): checked on CPU without a process group."""

import torch
from torch import nn

from tcm.build import build_detector, convert_sync_batchnorm
from tcm.config import DetectorConfig, PANHeadConfig


def _batchnorms(model: nn.Module, kind: type) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if type(m) is kind}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_detector(DetectorConfig.tiny(PANHeadConfig()), pretrained=False).train()


def test_every_batchnorm_becomes_sync_with_the_same_parameters_and_outputs():
    images = torch.randn(2, 3, 64, 64)
    expected = _model()(images)  # a twin: the forward moves running statistics, so convert a fresh copy

    model = _model()
    before = _batchnorms(model, nn.BatchNorm2d)
    assert len(before) > 10  # backbone stem and stages, neck, head
    params = {name: id(p) for name, p in model.named_parameters()}
    keys = set(model.state_dict())
    synced = convert_sync_batchnorm(model)
    assert not _batchnorms(synced, nn.BatchNorm2d)  # none left behind
    assert set(_batchnorms(synced, nn.SyncBatchNorm)) == set(before)  # one for one, same places
    assert {name: id(p) for name, p in synced.named_parameters()} == params  # the optimiser's parameters
    assert set(synced.state_dict()) == keys  # checkpoints load into either
    got = synced(images)  # no process group: plain batch norm over this batch
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value)
