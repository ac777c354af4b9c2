import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tcm.config import PANHeadConfig
from tcm.heads.pan import PANHead, embedding_loss_single
from tcm.heads.pan_codec import PANCodec
from tcm.losses import ohem_text_mask

IN_CHANNELS = [32, 64, 128, 257]  # tiny C2..C5 with the +1 TCM score map on C5
CFG = PANHeadConfig(neck_channels=16)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def feats(B: int = 2, size: int = 128):
    strides = (4, 8, 16, 32)
    return [torch.randn(B, c, size // s, size // s) for c, s in zip(IN_CHANNELS, strides, strict=True)]


def targets(B: int = 2, size: int = 128, empty: bool = False) -> dict[str, torch.Tensor]:
    codec = PANCodec(CFG)
    polys = [] if empty else [
        np.array([[10, 20], [100, 20], [100, 50], [10, 50]], float),
        np.array([[20, 70], [110, 70], [110, 110], [20, 110]], float),
    ]
    maps = [codec.encode(polys, [False] * len(polys), size, size) for _ in range(B)]
    return {k: torch.from_numpy(np.stack([m[k] for m in maps])) for k in maps[0]}


def test_output_shapes_train_and_eval():
    head = PANHead(CFG, IN_CHANNELS)
    for train in (True, False):
        head.train(train)
        out = head(feats())
        assert set(out) == {"text_logits", "kernel_logits", "embedding"}
        assert out["text_logits"].shape == (2, 1, 32, 32)
        assert out["kernel_logits"].shape == (2, 1, 32, 32)
        assert out["embedding"].shape == (2, 4, 32, 32)


def test_loss_and_backward_reach_every_parameter():
    head = PANHead(CFG, IN_CHANNELS)
    losses = head.loss(head(feats()), targets())
    assert set(losses) == {"loss_text", "loss_kernel", "loss_emb", "loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    expected = losses["loss_text"] + 0.5 * losses["loss_kernel"] + 0.25 * losses["loss_emb"]
    assert torch.allclose(losses["loss"], expected)
    assert losses["loss_emb"] > 0
    losses["loss"].backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_empty_image_gives_finite_losses():
    head = PANHead(CFG, IN_CHANNELS)
    losses = head.loss(head(feats()), targets(empty=True))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_emb"] == 0
    losses["loss"].backward()


def test_perfect_prediction_scores_far_better_than_a_wrong_one():
    head = PANHead(CFG, IN_CHANNELS)
    t = targets()
    codec = PANCodec(CFG)
    per_image = [codec.targets_as_outputs({k: v[b].numpy() for k, v in t.items()}) for b in range(2)]
    perfect = {k: torch.from_numpy(np.stack([p[k] for p in per_image])) for k in per_image[0]}
    wrong = {k: -v for k, v in perfect.items()}
    wrong["embedding"] = torch.zeros_like(perfect["embedding"])  # every instance on the same vector
    good, bad = head.loss(perfect, t), head.loss(wrong, t)
    # perfect at stride 4 is not perfect at stride 1 (block edges), hence the small margins
    assert good["loss_text"] < 0.1 and good["loss_kernel"] < 0.3 and good["loss_emb"] < 0.1
    for key in ("loss_text", "loss_kernel", "loss_emb"):
        assert bad[key] > good[key] + 0.5


def reference_embedding_loss(emb, instances, kernel, mask, delta_agg=0.5, delta_dis=1.5):
    """Plain loops over instances and pairs, straight from the formulas."""
    labels = instances * mask
    present = [int(v) for v in torch.unique(labels * kernel) if v > 0]
    if not present:
        return torch.tensor(0.0)
    means = [emb[:, (labels == i) & kernel].mean(dim=1) for i in present]
    agg = []
    for i, g in zip(present, means, strict=True):
        d = (emb[:, labels == i] - g[:, None]).norm(dim=0)
        agg.append(torch.log1p(F.relu(d - delta_agg) ** 2).mean())
    loss = torch.stack(agg).mean()
    dis = [torch.log1p(F.relu(2 * delta_dis - (gi - gj).norm()) ** 2)
           for a, gi in enumerate(means) for b, gj in enumerate(means) if a != b]
    if dis:
        loss = loss + torch.stack(dis).mean()
    return loss + 1e-3 * torch.stack([torch.log1p(g.norm()) for g in means]).mean()


def test_embedding_loss_matches_the_formula():
    C, H, W = 4, 24, 30
    emb = torch.randn(C, H, W)
    instances = torch.zeros(H, W, dtype=torch.long)
    instances[2:10, 2:14], instances[12:20, 3:25], instances[2:8, 18:28] = 1, 2, 5  # label 5: gaps are fine
    kernel = torch.zeros(H, W, dtype=torch.bool)
    kernel[4:8, 4:12], kernel[14:18, 6:20], kernel[3:7, 20:26] = True, True, True
    mask = torch.ones(H, W, dtype=torch.bool)
    mask[2:8, 18:28] = False  # instance 5 ignored -> two instances remain
    ours = embedding_loss_single(emb, instances, kernel, mask, 0.5, 1.5)
    assert torch.allclose(ours, reference_embedding_loss(emb, instances, kernel, mask), atol=1e-5)
    one = embedding_loss_single(emb, instances * (instances == 1), kernel, mask, 0.5, 1.5)
    assert torch.allclose(one, reference_embedding_loss(emb, instances * (instances == 1), kernel, mask),
                          atol=1e-5)  # a single instance: no discrimination term


def test_ohem_selects_positives_and_three_times_as_many_hardest_negatives():
    scores = torch.arange(40, dtype=torch.float32).reshape(1, 5, 8)  # higher = harder negative
    text = torch.zeros(1, 5, 8, dtype=torch.bool)
    text[0, 0, :2] = True  # 2 positives (the easiest scores 0 and 1)
    mask = torch.ones(1, 5, 8, dtype=torch.bool)
    sel = ohem_text_mask(scores, text, mask)
    assert sel[text].all()
    assert int(sel[~text].sum()) == 6 and sel[0, 4, 2:].all()  # the 6 highest negatives: 34..39
    assert torch.equal(ohem_text_mask(scores, torch.zeros_like(text), mask), mask)  # no positive: plain mask
