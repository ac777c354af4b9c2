import pytest
import torch
import torch.nn.functional as F

from tcm.backbone.image import ImageEncoder, dense_attention_pool, resize_positional_embedding
from tcm.config import DetectorConfig


@pytest.fixture(autouse=True)
def one_thread():
    """Small ops on 2 shared cores run far faster single-threaded (no OpenMP contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def encoder() -> ImageEncoder:
    torch.manual_seed(0)
    return ImageEncoder(DetectorConfig.tiny().clip).eval()


def test_pyramid_matches_declared_channels_and_strides(encoder):
    B, H, W = 2, 128, 96  # non-square on purpose
    feats = encoder(torch.randn(B, 3, H, W))
    assert [s.stride for s in encoder.pyramid] == [4, 8, 16, 32]
    for spec, f in zip(encoder.pyramid, feats.pyramid, strict=True):
        assert f.shape == (B, spec.channels, H // spec.stride, W // spec.stride)
    E = encoder.dense.channels
    assert feats.global_feat.shape == (B, E)
    assert feats.feature_map.shape == (B, E, H // 32, W // 32)


def test_global_token_equals_open_clip_pool_at_pretrain_grid(encoder):
    c5 = torch.randn(2, encoder.channels[-1], 7, 7)  # 224 / 32: the pretrained grid
    global_feat, _ = dense_attention_pool(encoder.resnet.attnpool, c5)
    torch.testing.assert_close(global_feat, encoder.resnet.attnpool(c5), atol=1e-5, rtol=1e-5)


def test_dense_map_is_every_token_of_full_attention(encoder):
    pool = encoder.resnet.attnpool
    B, C, h, w = 2, encoder.channels[-1], 3, 5
    c5 = torch.randn(B, C, h, w)
    _, fmap = dense_attention_pool(pool, c5)
    # reference: torch's MHA with every token as a query, the positional table resized independently
    tokens = c5.flatten(2).permute(2, 0, 1)  # (hw, B, C)
    tokens = torch.cat([tokens.mean(0, keepdim=True), tokens])  # (1 + hw, B, C)
    grid = pool.positional_embedding[1:].reshape(1, 7, 7, C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False).flatten(2)[0].T  # (hw, C)
    tokens = tokens + torch.cat([pool.positional_embedding[:1], grid])[:, None]
    out, _ = F.multi_head_attention_forward(
        tokens, tokens, tokens, C, pool.num_heads, None,
        torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), None, None, False, 0.0,
        pool.c_proj.weight, pool.c_proj.bias, training=False, need_weights=False, use_separate_proj_weight=True,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
    )  # (1 + hw, B, E)
    expected = out[1:].permute(1, 2, 0).reshape(B, -1, h, w)
    torch.testing.assert_close(fmap, expected, atol=1e-5, rtol=1e-5)


def test_positional_embedding_resize_keeps_token_zero_and_identity_grid():
    pos = torch.randn(1 + 49, 16)
    assert resize_positional_embedding(pos, 7, 7) is pos
    out = resize_positional_embedding(pos, 10, 4)
    assert out.shape == (1 + 40, 16)
    assert torch.equal(out[0], pos[0])
    # a constant grid stays constant under bilinear resizing
    const = torch.cat([pos[:1], torch.ones(49, 16) * 3.0])
    torch.testing.assert_close(resize_positional_embedding(const, 10, 4)[1:], torch.full((40, 16), 3.0))
    with pytest.raises(ValueError, match="square"):
        resize_positional_embedding(torch.randn(1 + 48, 16), 7, 7)


def test_input_not_multiple_of_32_is_refused(encoder):
    with pytest.raises(ValueError, match="multiple of 32"):
        encoder(torch.randn(1, 3, 100, 128))


def test_baseline_encoder_has_no_attention_pool():
    enc = ImageEncoder(DetectorConfig.tiny().clip, dense=False)
    assert enc.dense is None and enc.resnet.attnpool is None
    assert not any("attnpool" in n for n, _ in enc.named_parameters())
    feats = enc(torch.randn(1, 3, 64, 64))
    assert feats.global_feat is None and feats.feature_map is None
    assert feats.pyramid[-1].shape == (1, enc.channels[-1], 2, 2)


def test_rn50_declares_clip_channels():
    enc = ImageEncoder(DetectorConfig().clip)
    assert enc.channels == [256, 512, 1024, 2048]
    assert enc.dense.channels == 1024 and enc.resnet.attnpool.num_heads == 32
