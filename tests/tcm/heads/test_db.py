import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tcm.config import DBHeadConfig
from tcm.heads.db import DBHead
from tcm.heads.db_codec import DBCodec
from tcm.losses import balanced_bce_with_logits

IN_CHANNELS = [32, 64, 128, 257]  # tiny C2..C5 with the +1 TCM score map on C5
CFG = DBHeadConfig(neck_channels=32)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def feats(B: int = 2, size: int = 128):
    strides = (4, 8, 16, 32)
    return [torch.randn(B, c, size // s, size // s) for c, s in zip(IN_CHANNELS, strides, strict=True)]


def targets(B: int = 2, size: int = 128, empty: bool = False) -> dict[str, torch.Tensor]:
    codec = DBCodec(CFG)
    polys = [] if empty else [np.array([[20, 30], [100, 30], [100, 60], [20, 60]], float)]
    maps = [codec.encode(polys, [False] * len(polys), size, size) for _ in range(B)]
    return {k: torch.from_numpy(np.stack([m[k] for m in maps])) for k in maps[0]}


def test_output_shapes_train_and_eval():
    head = DBHead(CFG, IN_CHANNELS)
    x = feats()
    for train in (True, False):
        head.train(train)
        out = head(x)
        assert set(out) == {"prob_logits", "thresh"}
        assert out["prob_logits"].shape == (2, 1, 128, 128)
        assert out["thresh"].shape == (2, 1, 128, 128)
        assert 0 <= out["thresh"].min() and out["thresh"].max() <= 1


def test_loss_and_backward_reach_every_parameter():
    head = DBHead(CFG, IN_CHANNELS)
    losses = head.loss(head(feats()), targets())
    assert set(losses) == {"loss_prob", "loss_thr", "loss_bin", "loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    expected = 5 * losses["loss_prob"] + 10 * losses["loss_thr"] + losses["loss_bin"]
    assert torch.allclose(losses["loss"], expected)
    losses["loss"].backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_empty_image_gives_finite_losses():
    head = DBHead(CFG, IN_CHANNELS)
    losses = head.loss(head(feats()), targets(empty=True))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_prob"] == 0 and losses["loss_thr"] == 0  # nothing positive, nothing to threshold
    losses["loss"].backward()


def test_perfect_prediction_scores_far_better_than_a_wrong_one():
    head = DBHead(CFG, IN_CHANNELS)
    t = targets()
    perfect = {
        "prob_logits": (t["gt_shrink"][:, None] * 40 - 20),
        "thresh": t["gt_thr"][:, None].clone(),
    }
    wrong = {"prob_logits": -perfect["prob_logits"], "thresh": 1 - perfect["thresh"]}
    good, bad = head.loss(perfect, t), head.loss(wrong, t)
    assert good["loss_prob"] < 1e-6 and good["loss_thr"] < 1e-6 and good["loss_bin"] < 0.05
    for key in ("loss_prob", "loss_thr", "loss_bin"):
        assert bad[key] > 10 * good[key] + 0.1


def test_loss_is_fp32_under_autocast():
    head = DBHead(CFG, IN_CHANNELS)
    out = {k: v.bfloat16() for k, v in head(feats()).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = head.loss(out, targets())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_balanced_bce_keeps_positives_and_the_hardest_negatives():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0, 1.0, 0.0, -4.0])
    target = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    mask = torch.ones(8)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    hardest = per_pixel[1:].sort(descending=True).values[:3]  # 3:1 with one positive
    expected = (per_pixel[0] + hardest.sum()) / 4
    assert torch.allclose(balanced_bce_with_logits(logits, target, mask), expected, atol=1e-5)
    mask[3] = 0  # the hardest negative is masked out
    hardest = per_pixel[[1, 2, 4, 5, 6, 7]].sort(descending=True).values[:3]
    assert torch.allclose(balanced_bce_with_logits(logits, target, mask), (per_pixel[0] + hardest.sum()) / 4,
                          atol=1e-5)
    assert balanced_bce_with_logits(logits, torch.zeros(8), mask) == 0  # no positive -> no negative
