"""FCENet head: output shapes, backward, loss terms against the codec's targets, empty images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tcm.config import FCEHeadConfig
from tcm.heads.fce import FCEHead
from tcm.heads.fce_codec import FCECodec, fourier_to_polygons

TINY_CHANNELS = [32, 64, 128, 257]  # tiny CLIP stages, C5 + 1 for the TCM score map
RN50_CHANNELS = [256, 512, 1024, 2049]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def features(channels: list[int], B: int, size: int) -> list[torch.Tensor]:
    return [torch.randn(B, c, size // s, size // s) for c, s in zip(channels, (4, 8, 16, 32), strict=True)]


def batch_targets(codec: FCECodec, images: list[list[np.ndarray]], size: int) -> dict[str, torch.Tensor]:
    encoded = [codec.encode(polys, [False] * len(polys), size, size) for polys in images]
    return {k: torch.from_numpy(np.stack([e[k] for e in encoded])) for k in encoded[0]}  # (B, ...) per key


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


@pytest.mark.parametrize(
    ("channels", "neck", "B", "size"), [(TINY_CHANNELS, 32, 2, 128), (RN50_CHANNELS, 256, 1, 64)]
)
def test_output_shapes_and_backward(channels, neck, B, size):
    torch.manual_seed(0)
    cfg = FCEHeadConfig(neck_channels=neck)
    head = FCEHead(cfg, channels)
    out = head(features(channels, B, size))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        f"{n}_s{s}": (B, 4 if n == "cls" else 22, size // s, size // s)
        for s in (8, 16, 32)
        for n in ("cls", "reg")
    }
    codec = FCECodec(cfg)
    polys = [[rect(8, 8, 40, 24)], [rect(4, 30, 60, 50)]][:B]
    losses = head.loss(out, batch_targets(codec, polys, size))
    assert set(losses) == {"loss_text", "loss_center", "loss_reg_x", "loss_reg_y", "loss"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    assert losses["loss"].item() == pytest.approx(
        sum(losses[k].item() for k in losses if k != "loss"), rel=1e-6
    )
    losses["loss"].backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert head.cls.weight.grad.abs().sum() > 0 and head.reg.weight.grad.abs().sum() > 0


def test_empty_image_gives_finite_losses():
    cfg = FCEHeadConfig(neck_channels=32)
    head = FCEHead(cfg, TINY_CHANNELS)
    out = head(features(TINY_CHANNELS, 2, 128))
    losses = head.loss(out, batch_targets(FCECodec(cfg), [[], []], 128))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_text"] > 0  # the hardest 100 background pixels per level still teach "no text"
    assert losses["loss_center"] == 0 and losses["loss_reg_x"] == 0 and losses["loss_reg_y"] == 0
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_perfect_outputs_give_zero_loss_and_regression_is_local_to_text():
    cfg = FCEHeadConfig(neck_channels=32)
    codec = FCECodec(cfg)
    head = FCEHead(cfg, TINY_CHANNELS)
    targets = batch_targets(codec, [[rect(10, 10, 50, 30)], [rect(60, 60, 90, 100)]], 128)  # both on s8
    perfect = [codec.targets_as_outputs({k: v[b].numpy() for k, v in targets.items()}) for b in range(2)]
    outputs = {k: torch.from_numpy(np.stack([p[k] for p in perfect])) for k in perfect[0]}  # (2, ...) per key
    losses = head.loss(outputs, targets)
    assert all(v.item() == pytest.approx(0.0, abs=1e-6) for v in losses.values())

    level = targets["level_s8"]  # (2, 25, 16, 16)
    text = level[:, 0] * level[:, 2] > 0  # (2, 16, 16) supervised text pixels
    noisy = dict(outputs)
    noise = torch.randn_like(outputs["reg_s8"])
    noisy["reg_s8"] = outputs["reg_s8"] + noise * (~text)[:, None]  # outside text only: no regression loss
    assert head.loss(noisy, targets)["loss_reg_x"].item() == pytest.approx(0.0, abs=1e-6)
    noisy["reg_s8"] = outputs["reg_s8"] + noise * text[:, None]
    worse = head.loss(noisy, targets)
    assert worse["loss_reg_x"] > 0.01 and worse["loss_reg_y"] > 0.01 and worse["loss_text"] < 1e-6


def test_head_inverse_fourier_matches_the_codec():
    cfg = FCEHeadConfig(neck_channels=32)
    head = FCEHead(cfg, TINY_CHANNELS)
    real, imag = np.random.default_rng(0).normal(size=(2, 7, 11))
    x, y = head._fourier_to_points(
        torch.tensor(real, dtype=torch.float32), torch.tensor(imag, dtype=torch.float32)
    )
    want = fourier_to_polygons(real, imag, cfg.num_sample)  # (7, 50, 2)
    assert np.allclose(x.numpy(), want[..., 0], atol=1e-4) and np.allclose(y.numpy(), want[..., 1], atol=1e-4)


def test_ohem_keeps_three_negatives_per_positive_or_100_without_text():
    M = 1000
    margin = torch.linspace(-5.0, 5.0, M)  # bg - fg logit: CE of a negative pixel grows as margin falls
    logits = torch.stack([margin, torch.zeros(M)], dim=1)  # (M, 2)
    ce_neg = torch.nn.functional.cross_entropy(logits, torch.zeros(M, dtype=torch.long), reduction="none")
    hardest = ce_neg.sort(descending=True).values
    mask = torch.ones(M)
    no_text = FCEHead._ohem_ce(logits, torch.zeros(M), mask)
    assert no_text.item() == pytest.approx(hardest[:100].mean().item(), rel=1e-5)
    target = torch.zeros(M)
    target[-10:] = 1.0  # 10 positives (easy end of the ramp), 990 negatives -> 30 hardest kept
    ce_pos = torch.nn.functional.cross_entropy(
        logits[-10:], torch.ones(10, dtype=torch.long), reduction="sum"
    )
    hard_neg = ce_neg[:-10].sort(descending=True).values[:30].sum()
    assert FCEHead._ohem_ce(logits, target, mask).item() == pytest.approx(
        ((ce_pos + hard_neg) / 40).item(), rel=1e-5
    )
    mask[:500] = 0.0  # masked pixels never count, even the hardest ones
    hard_neg = ce_neg[500:-10].sort(descending=True).values[:30].sum()
    assert FCEHead._ohem_ce(logits, target, mask).item() == pytest.approx(
        ((ce_pos + hard_neg) / 40).item(), rel=1e-5
    )
