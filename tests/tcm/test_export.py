import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tcm.build import build_detector
from tcm.config import DetectorConfig, FCEHeadConfig, PANHeadConfig
from tcm.export import export_onnx


@pytest.fixture(autouse=True)
def one_thread():
    """Small ops on 2 shared cores run far faster single-threaded (no OpenMP contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_both(cfg: DetectorConfig, tmp_path, H: int = 96, W: int = 128) -> None:
    torch.manual_seed(0)
    model = build_detector(cfg, pretrained=False)
    model.train()  # BN statistics that differ from the init, so eval-mode export matters
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(2, 3, H, W))
    path = tmp_path / "model.onnx"
    names = export_onnx(model, path, H, W)
    assert model.training  # mode restored
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == names and graph.input[0].name == "images"

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model.eval()
    for B, h, w in ((1, H, W), (2, H, W), (1, H + 64, W - 32)):  # batch, height and width are dynamic
        images = torch.randn(B, 3, h, w)
        with torch.no_grad():
            expected = model(images)
        got = dict(zip(names, session.run(None, {"images": images.numpy()}), strict=True))
        assert list(got) == list(expected)
        for key, value in expected.items():
            assert got[key].shape == tuple(value.shape), key
            np.testing.assert_allclose(got[key], value.numpy(), atol=1e-4, rtol=0, err_msg=key)


def test_tiny_tcm_db_matches_pytorch(tmp_path):
    run_both(DetectorConfig.tiny(), tmp_path)


@pytest.mark.parametrize("head", [PANHeadConfig(neck_channels=32), FCEHeadConfig(neck_channels=32)], ids=["pan", "fce"])
def test_tiny_other_heads_match_pytorch(head, tmp_path):
    run_both(DetectorConfig.tiny(head=head), tmp_path)


def test_tiny_baseline_matches_pytorch(tmp_path):
    run_both(DetectorConfig.tiny(enabled=False), tmp_path)


def test_size_must_be_multiple_of_32(tmp_path):
    model = build_detector(DetectorConfig.tiny(), pretrained=False)
    with pytest.raises(ValueError, match="multiple of 32"):
        export_onnx(model, tmp_path / "m.onnx", 100, 128)
