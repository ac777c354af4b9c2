import math

import numpy as np
import pytest
import torch

import tcm.build
from tcm.build import aux_loss_kind, build_codec, build_detector
from tcm.config import DBHeadConfig, DetectorConfig, FCEHeadConfig, HeadConfig, PANHeadConfig
from tcm.detector import normalize
from tcm.matching import matching_loss


@pytest.fixture(autouse=True)
def one_thread():
    """Small ops on 2 shared cores run far faster single-threaded (no OpenMP contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_HEADS = [DBHeadConfig(neck_channels=32), PANHeadConfig(neck_channels=32), FCEHeadConfig(neck_channels=32)]


def expected_shapes(head: HeadConfig, B: int, H: int, W: int, tcm: bool) -> dict[str, tuple[int, ...]]:
    """The output shapes documented in the Detector docstring."""
    match head:
        case DBHeadConfig():
            shapes = {"prob_logits": (B, 1, H, W), "thresh": (B, 1, H, W)}
        case PANHeadConfig():
            h, w = H // 4, W // 4
            shapes = {"text_logits": (B, 1, h, w), "kernel_logits": (B, 1, h, w), "embedding": (B, head.emb_dim, h, w)}
        case FCEHeadConfig():
            k = head.fourier_degree
            shapes = {}
            for s in head.strides:
                shapes[f"cls_s{s}"] = (B, 4, H // s, W // s)
                shapes[f"reg_s{s}"] = (B, 2 * (2 * k + 1), H // s, W // s)
    if tcm:
        shapes["score_map"] = (B, 1, H // 32, W // 32)
    return shapes


def make_targets(head: HeadConfig, polygons_per_image: list[list[np.ndarray]], H: int, W: int) -> dict[str, torch.Tensor]:
    codec = build_codec(head)
    encoded = [codec.encode(polys, [False] * len(polys), H, W) for polys in polygons_per_image]
    return {k: torch.from_numpy(np.stack([e[k] for e in encoded])) for k in encoded[0]}


def box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def check_train_step(cfg: DetectorConfig, B: int, H: int, W: int) -> None:
    torch.manual_seed(0)
    model = build_detector(cfg, pretrained=False).train()
    images = torch.randn(B, 3, H, W)
    outputs = model(images)
    expected = expected_shapes(cfg.head, B, H, W, cfg.tcm.enabled)
    assert {k: tuple(v.shape) for k, v in outputs.items()} == expected

    text = [box(W * 0.2, H * 0.3, W * 0.8, H * 0.55)]
    targets = make_targets(cfg.head, [text] + [[]] * (B - 1), H, W)  # the last image has no text
    losses = model.loss(outputs, targets)
    assert all(torch.isfinite(v).all() for v in losses.values()), losses
    head_total = model.head.loss({k: v for k, v in outputs.items() if k != "score_map"}, targets)["loss"]
    if cfg.tcm.enabled:
        kind = aux_loss_kind(cfg.head)  # released identity head of this head kind
        aux = matching_loss(outputs["score_map"], targets["aux_text"], targets["aux_mask"], cfg.tcm.tau, kind)
        torch.testing.assert_close(losses["loss_aux"], cfg.tcm.aux_loss_weight * aux)
        torch.testing.assert_close(losses["loss"], head_total + losses["loss_aux"])
    else:
        assert "loss_aux" not in losses
        torch.testing.assert_close(losses["loss"], head_total)
    losses["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["image_encoder.resnet.conv1.weight"].abs().sum() > 0
    if cfg.tcm.enabled:
        for name in ("text_encoder.contexts", "prompt_generator.net.1.weight", "visual_prompt_generator.gamma",
                     "context_decoder.gamma"):
            assert grads[name] is not None and torch.isfinite(grads[name]).all() and grads[name].abs().sum() > 0, name

    # no text anywhere: every loss stays finite, and backward works
    model.zero_grad()
    empty = make_targets(cfg.head, [[]] * B, H, W)
    losses = model.loss(model(images), empty)
    assert all(torch.isfinite(v).all() for v in losses.values()), losses
    losses["loss"].backward()

    model.eval()
    with torch.no_grad():
        assert {k: tuple(v.shape) for k, v in model(images).items()} == expected  # same keys in eval


@pytest.mark.parametrize("head", TINY_HEADS, ids=lambda h: h.kind)
def test_tiny_tcm_per_head(head):
    check_train_step(DetectorConfig.tiny(head=head), B=2, H=128, W=128)


@pytest.mark.parametrize("head", TINY_HEADS, ids=lambda h: h.kind)
def test_tiny_baseline_per_head(head, monkeypatch):
    seen = []
    real_build_head = tcm.build.build_head
    monkeypatch.setattr(tcm.build, "build_head", lambda cfg, ch: seen.append(list(ch)) or real_build_head(cfg, ch))
    check_train_step(DetectorConfig.tiny(head=head, enabled=False), B=2, H=96, W=128)
    assert seen == [[32, 64, 128, 256]]  # no +1 channel without the score map


def test_tcm_adds_score_channel_and_parts(monkeypatch):
    seen = []
    real_build_head = tcm.build.build_head
    monkeypatch.setattr(tcm.build, "build_head", lambda cfg, ch: seen.append(list(ch)) or real_build_head(cfg, ch))
    model = build_detector(DetectorConfig.tiny(), pretrained=False)
    assert seen == [[32, 64, 128, 257]]
    assert model.tcm_enabled and model.image_encoder.resnet.attnpool is not None
    baseline = build_detector(DetectorConfig.tiny(enabled=False), pretrained=False)
    assert baseline.text_encoder is None and baseline.image_encoder.resnet.attnpool is None
    assert not any(n.startswith(("text_encoder", "prompt_generator")) for n, _ in baseline.named_parameters())


def test_tcm_parts_can_be_switched_off_one_by_one():
    for off in ("language_prompt_generator", "visual_prompt_generator", "context_decoder"):
        model = build_detector(DetectorConfig.tiny(**{off: False}, num_prompts=32), pretrained=False).eval()
        attr = {"language_prompt_generator": "prompt_generator"}.get(off, off)
        assert getattr(model, attr) is None
        with torch.no_grad():
            out = model(torch.randn(1, 3, 64, 64))
        assert out["score_map"].shape == (1, 1, 2, 2) and out["score_map"].abs().max() <= 1 + 1e-5


def test_build_without_weights_warns():
    with pytest.warns(UserWarning, match="results will be poor"):
        build_detector(DetectorConfig.tiny())


def test_normalize_uses_config_mean_and_std():
    cfg = DetectorConfig.tiny()
    images = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    images[0, 1] = 255
    out = normalize(images, cfg)
    assert out.dtype == torch.float32
    assert math.isclose(out[0, 0, 0, 0].item(), -cfg.pixel_mean[0] / cfg.pixel_std[0], rel_tol=1e-6)
    assert math.isclose(out[0, 1, 1, 1].item(), (255 - cfg.pixel_mean[1]) / cfg.pixel_std[1], rel_tol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("head", [DBHeadConfig(), PANHeadConfig(), FCEHeadConfig()], ids=lambda h: h.kind)
def test_full_rn50_per_head(head):
    check_train_step(DetectorConfig(head=head), B=1, H=256, W=256)
