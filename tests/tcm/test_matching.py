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
