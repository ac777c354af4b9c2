import pytest
import torch

from tcm.neck import FPEMFFM, FPN, FPNC

IN_CHANNELS = [32, 64, 128, 257]  # tiny C2..C5, C5 with the +1 TCM score map


def pyramid(B: int = 2, H: int = 128, W: int = 96, channels=IN_CHANNELS, grad: bool = False):
    strides = (4, 8, 16, 32)
    return [torch.randn(B, c, H // s, W // s, requires_grad=grad) for c, s in zip(channels, strides, strict=True)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_fpnc_shape_and_top_down_path():
    neck = FPNC(IN_CHANNELS, 32)
    feats = pyramid(grad=True)
    out = neck(feats)
    assert out.shape == (2, 32, 32, 24)
    # the stride-4 slice (first C/4 channels) sees C5 only through the top-down additions
    out[:, :8].sum().backward()
    assert feats[3].grad is not None and feats[3].grad.abs().sum() > 0


def test_fpnc_odd_sizes_and_channel_check():
    neck = FPNC(IN_CHANNELS, 32)
    feats = [torch.randn(1, c, s, s) for c, s in zip(IN_CHANNELS, (25, 13, 7, 4), strict=True)]
    assert neck(feats).shape == (1, 32, 25, 25)
    with pytest.raises(ValueError, match="feature 3 has 256 channels"):
        neck(pyramid(channels=[32, 64, 128, 256]))
    with pytest.raises(ValueError, match="not divisible"):
        FPNC(IN_CHANNELS, 30)


def test_fpem_ffm_shape_and_backward():
    neck = FPEMFFM(IN_CHANNELS, channels=16, num_fpem=2)
    feats = pyramid(grad=True)
    out = neck(feats)
    assert out.shape == (2, 64, 32, 24)  # 4 x 16 channels at stride 4
    out[:, :16].sum().backward()  # the c2 slice depends on every level through the FPEM paths
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    with pytest.raises(ValueError, match="C2..C5"):
        FPEMFFM(IN_CHANNELS[1:], 16)


def test_fpn_start_level_outputs_strides_8_16_32():
    neck = FPN(IN_CHANNELS, 24, start_level=1)
    outs = neck(pyramid())
    assert [tuple(o.shape) for o in outs] == [(2, 24, 16, 12), (2, 24, 8, 6), (2, 24, 4, 3)]
    # top-down: the stride-8 output changes when only C5 changes
    feats = pyramid()
    base = neck(feats)[0]
    feats[3] = feats[3] + 1.0
    assert not torch.allclose(neck(feats)[0], base)
    with pytest.raises(ValueError, match="expected 4 feature maps"):
        neck(pyramid()[1:])
