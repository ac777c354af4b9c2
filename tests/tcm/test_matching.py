import math

import torch
import torch.nn.functional as F

from tcm.losses import balanced_bce_with_logits
from tcm.matching import matching_loss, score_map


def test_score_map_is_per_pixel_cosine():
    pixels, text = torch.randn(2, 8, 3, 5), torch.randn(2, 1, 8)
    P = score_map(pixels * 7.0, text * 0.1)  # invariant to scale
    expected = F.cosine_similarity(pixels, text[:, 0, :, None, None], dim=1)[:, None]
    assert P.shape == (2, 1, 3, 5)
    torch.testing.assert_close(P, expected, atol=1e-6, rtol=1e-5)


def test_balanced_bce_keeps_positives_and_hardest_negatives():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0, 1.0, 4.0]])
    target = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0]])
    mask = torch.tensor([[1.0, 1, 1, 1, 1, 1, 0]])  # the last (hardest) negative is ignored
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")[0]
    # 1 positive -> 3 negatives: the hardest unmasked ones are logits 3.0, 1.0, 0.5
    expected = (bce[0] + bce[3] + bce[5] + bce[2]) / 4
    torch.testing.assert_close(balanced_bce_with_logits(logits, target, mask), expected, atol=1e-5, rtol=1e-5)


def test_matching_loss_upsamples_logits_over_tau():
    tau = 0.07
    score = torch.full((1, 1, 2, 2), 0.5, requires_grad=True)
    text = torch.zeros(1, 64, 64)
    text[0, :32, :32] = 1.0
    loss = matching_loss(score, text, torch.ones(1, 64, 64), tau)
    n_pos = 32 * 32
    pos = F.softplus(torch.tensor(-0.5 / tau))  # BCE of a positive at logit 0.5 / tau
    neg = F.softplus(torch.tensor(0.5 / tau))
    expected = (n_pos * pos + 3 * n_pos * neg) / (4 * n_pos)
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-4)
    loss.backward()
    assert score.grad.abs().sum() > 0


def test_matching_loss_without_text_is_zero_and_differentiable():
    score = torch.randn(2, 1, 2, 2, requires_grad=True)
    loss = matching_loss(score, torch.zeros(2, 64, 64), torch.ones(2, 64, 64), 0.07)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(score.grad, torch.zeros_like(score))


# ------------------------------------------------------------------ per-head auxiliary losses (issue #15 item 3)


def test_each_pixel_is_weighted_by_its_own_images_masks():
    """Two images, text in different cells, target on the score map's grid (FCE: no upsampling). Every negative
    is kept (n_neg = min(3 n_pos, #neg) = 6), so the loss is the plain mean BCE; the released broadcasting
    ((N, H, W) masks x (N, 1, H, W) losses) would weight image 0's losses by image 1's text cell and vice versa."""
    score = torch.tensor([[[[0.0, -0.2], [0.3, -0.5]]], [[[0.1, 0.4], [-0.3, 0.6]]]])  # (2, 1, 2, 2)
    text = torch.zeros(2, 2, 2)
    text[0, 0, 0] = text[1, 1, 1] = 1.0
    mask = torch.ones(2, 2, 2)
    bce = F.binary_cross_entropy_with_logits(score[:, 0] / 0.5, text, reduction="none")  # (2, 2, 2)
    loss = matching_loss(score, text, mask, tau=0.5, kind="balanced_bce")
    assert math.isclose(loss.item(), bce.mean().item(), rel_tol=1e-5)


def test_ohem_dice_selects_the_hardest_negatives_per_image_and_scores_square_dice():
    """Released PANIdentityHead: OHEM 3:1 on the detached logits, then 1 - 2(sum pg + e) / (sum p^2 + e +
    sum g^2 + e) with e = 1e-3 over the selected pixels (sigmoid of the logits)."""
    score = torch.tensor([[[[0.0, -1.0, -2.0, -3.0], [-5.0, -5.0, -5.0, -5.0]]]], requires_grad=True)  # (1,1,2,4)
    text = torch.zeros(1, 2, 4)
    text[0, 0, 0] = 1.0
    loss = matching_loss(score, text, torch.ones(1, 2, 4), tau=1.0, kind="ohem_dice")
    p = torch.sigmoid(torch.tensor([0.0, -1.0, -2.0, -3.0]))  # the positive + the 3 hardest negatives
    e = 1e-3
    expected = 1 - 2 * (p[0] + e) / ((p**2).sum() + e + 1 + e)
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5)
    loss.backward()
    assert torch.count_nonzero(score.grad[0, 0, 1]) == 0  # the easy negatives (-5) were not selected
    assert score.grad[0, 0, 0, 0] < 0  # the text cell is pushed up


def test_each_head_gets_its_released_auxiliary_loss():
    from tcm.build import aux_loss_kind, build_detector
    from tcm.config import DBHeadConfig, DetectorConfig, FCEHeadConfig, PANHeadConfig

    assert aux_loss_kind(DBHeadConfig()) == "balanced_bce"  # IdentityHead, bbce_loss=True
    assert aux_loss_kind(FCEHeadConfig()) == "balanced_bce"  # FCEIdentityHead, bbce_loss=True
    assert aux_loss_kind(PANHeadConfig()) == "ohem_dice"  # PANIdentityHead, bbce_loss=False
    assert build_detector(DetectorConfig.tiny(PANHeadConfig()), pretrained=False).aux_loss == "ohem_dice"
