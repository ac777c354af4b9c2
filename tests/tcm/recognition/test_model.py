"""CLIP4STR at the tiny and the full ViT-B/16 size: output shapes, gradients (frozen text parts, no cross-modal
gradient into the image encoder), the decoding modes, the cross-modal caption, parameter groups, preprocessing."""

import numpy as np
import pytest
import torch

from tcm.recognition.config import OPENAI_MEAN, OPENAI_STD, RecognizerConfig
from tcm.recognition.model import CLIP4STR
from tcm.recognition.optim import param_groups
from tcm.recognition.preprocess import preprocess

from .conftest import build_quietly

LABELS = ["Ab3", "hello", "x", "Z-9!"]


@pytest.fixture(scope="module")
def tiny(tiny_cfg) -> CLIP4STR:
    return build_quietly(tiny_cfg)


def images_for(cfg: RecognizerConfig, B: int, seed: int = 0) -> torch.Tensor:
    H, W = cfg.image_size
    return torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(seed))


def check_shapes(model: CLIP4STR, N: int, E: int, B: int) -> None:
    cfg = model.cfg
    images = images_for(cfg, B)
    model.eval()
    with torch.no_grad():
        assert model.image_encoder(images).shape == (B, N, E)
        tokens = model.text_encoder.tokenize(["hello"] * B)
        assert tokens.shape == (B, 16) and tokens[0, 0] == 49406  # SOT
        assert model.text_encoder(tokens).shape == (B, 16, E)
        out = model(images)
        assert set(out) == {"visual_logits", "cross_logits", "logits"}
        for value in out.values():
            assert value.shape == (B, 26, 95)  # refined: every position; [E] + 94 characters
        assert torch.equal(out["logits"], out["cross_logits"])
        fixed = model(images, early_stop=False, refine_iters=0)
        assert fixed["logits"].shape == (B, 26, 95)


def check_gradients(model: CLIP4STR, B: int) -> None:
    """Full loss: every trainable part gets a gradient, the frozen text parts none. Cross loss alone: nothing in the
    image encoder or the visual decoder."""
    model.train()
    images = images_for(model.cfg, B)
    labels = LABELS[:B]
    losses = model.loss(images, labels, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"loss", "loss_visual", "loss_cross"}
    assert torch.isclose(losses["loss"], losses["loss_visual"] + losses["loss_cross"])
    losses["loss"].backward()
    text = model.text_encoder.clip
    N = model.cfg.text_freeze_layers
    frozen = [text.token_embedding.weight, text.positional_embedding]
    frozen += [p for block in text.transformer.resblocks[:N] for p in block.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    trainable_text = [p for block in text.transformer.resblocks[N:] for p in block.parameters()]
    trainable_text += [text.text_projection, text.ln_final.weight]
    assert all(p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0 for p in trainable_text)
    for part in (model.image_encoder, model.visual_decoder, model.cross_decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())

    model.zero_grad(set_to_none=True)
    losses = model.loss(images, labels, generator=torch.Generator().manual_seed(0))
    losses["loss_cross"].backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert all(p.grad is None for p in model.visual_decoder.parameters())
    assert all(p.grad is not None for p in trainable_text)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cross_decoder.parameters())
    model.zero_grad(set_to_none=True)


def test_tiny_shapes(tiny):
    check_shapes(tiny, N=1 + 4 * 16, E=64, B=2)  # 32x128 with 8x8 patches: 4 x 16 grid + CLS


def test_tiny_gradients(tiny):
    check_gradients(tiny, B=4)


def test_frozen_text_blocks_stay_in_eval_mode(tiny):
    tiny.train()
    blocks = tiny.text_encoder.clip.transformer.resblocks
    assert not blocks[0].training and not tiny.text_encoder.clip.token_embedding.training
    assert blocks[1].training and tiny.image_encoder.training


def test_freeze_depth_extremes(tiny_cfg):
    none = build_quietly(tiny_cfg.__class__.tiny(text_freeze_layers=-1))
    assert all(p.requires_grad for p in none.parameters())
    everything = build_quietly(tiny_cfg.__class__.tiny(text_freeze_layers=2))  # = text_layers
    assert not any(p.requires_grad for p in everything.text_encoder.parameters())
    assert all(p.requires_grad for p in everything.image_encoder.parameters())


def test_early_stop_is_a_prefix_of_fixed_step_decoding(tiny):
    tiny.eval()
    # an image encoder whose [E] logit wins at once for every image: AR stops after the first step
    images = images_for(tiny.cfg, 3)
    with torch.no_grad():
        tiny.visual_decoder.head.bias[0] += 100.0
        try:
            short = tiny(images, refine_iters=0)
            fixed = tiny(images, refine_iters=0, early_stop=False)
        finally:
            tiny.visual_decoder.head.bias[0] -= 100.0
    assert short["visual_logits"].shape[1] == 1 and fixed["visual_logits"].shape[1] == 26
    assert short["cross_logits"].shape[1] == 1  # the cross branch runs as many steps as the visual one
    assert torch.allclose(short["visual_logits"], fixed["visual_logits"][:, :1], atol=1e-5)
    assert torch.allclose(short["cross_logits"], fixed["cross_logits"][:, :1], atol=1e-5)


def test_non_autoregressive_mode_with_the_cross_branch(tiny_cfg):
    nar = build_quietly(RecognizerConfig.tiny(decode_ar=False, refine_iters=2)).eval()
    images = images_for(tiny_cfg, 2)
    with torch.no_grad():
        out = nar(images)
        once = nar(images, refine_iters=0)
    assert out["cross_logits"].shape == once["cross_logits"].shape == (2, 26, 95)
    assert not torch.allclose(out["cross_logits"], once["cross_logits"])  # refinement changed the output
    texts, confidences = nar.tokenizer.decode(out["logits"])
    assert len(texts) == 2 and all(0.0 <= c <= 1.0 for c in confidences)


def test_visual_branch_alone(tiny_cfg):
    visual = build_quietly(RecognizerConfig.tiny(cross_modal=False)).eval()
    assert visual.text_encoder is None and visual.cross_decoder is None
    with torch.no_grad():
        out = visual(images_for(tiny_cfg, 2))
    assert set(out) == {"visual_logits", "logits"} and torch.equal(out["logits"], out["visual_logits"])
    losses = visual.loss(images_for(tiny_cfg, 2), ["ab", "c"])
    assert set(losses) == {"loss", "loss_visual"}


def test_cross_memory_reads_the_lowercased_alphanumeric_prediction(tiny):
    tiny.eval()
    tok = tiny.tokenizer
    ids = tok.encode(["He-Llo"])[0, 1:].tolist() + [tok.stoi["x"]]  # H e - L l o [E] x
    logits = torch.full((1, len(ids), tok.num_classes), -10.0)
    logits[0, torch.arange(len(ids)), torch.tensor(ids)] = 10.0
    memory = torch.randn(1, 65, 64)
    with torch.no_grad():
        cross = tiny.cross_memory(logits, memory)
        expected = tiny.text_encoder(tiny.text_encoder.tokenize(["hello"]))
    assert cross.shape == (1, 65 + 16, 64)
    assert torch.equal(cross[:, :65], memory)
    assert torch.allclose(cross[:, 65:], expected)


def test_loss_rejects_labels_that_do_not_fit(tiny, tiny_cfg):
    with pytest.raises(ValueError, match="max_label_length"):
        tiny.loss(images_for(tiny_cfg, 1), ["a" * 26])
    with pytest.raises(ValueError, match="charset"):
        tiny.loss(images_for(tiny_cfg, 1), ["naïve"])


def test_param_groups(tiny, tiny_cfg):
    groups = {g["name"]: g for g in param_groups(tiny, tiny_cfg, 1e-4, 0.2)}
    assert set(groups) == {"encoder/decay", "encoder/no_decay", "decoder/decay", "decoder/no_decay"}
    assert groups["decoder/decay"]["lr"] == pytest.approx(19e-4) and groups["encoder/decay"]["lr"] == 1e-4
    assert groups["encoder/no_decay"]["weight_decay"] == groups["decoder/no_decay"]["weight_decay"] == 0.0
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    names = {id(p): n for n, p in tiny.named_parameters()}
    trainable = {id(p) for p in tiny.parameters() if p.requires_grad}
    assert set().union(*ids.values()) == trainable and sum(len(v) for v in ids.values()) == len(trainable)
    no_decay = {names[i] for i in ids["encoder/no_decay"] | ids["decoder/no_decay"]}
    assert {"visual_decoder.pos_queries", "visual_decoder.text_embed.embedding.weight"} <= no_decay
    assert "image_encoder.visual.ln_post.weight" in no_decay and "cross_decoder.head.bias" in no_decay
    decay = {names[i] for i in ids["encoder/decay"] | ids["decoder/decay"]}
    assert {"image_encoder.visual.conv1.weight", "visual_decoder.head.weight"} <= decay
    assert "text_encoder.clip.text_projection" in decay
    assert all(names[i].startswith(("visual_decoder", "cross_decoder")) for i in ids["decoder/decay"])


def test_preprocess_resizes_and_normalises(tiny_cfg):
    grey = np.full((20, 50), 128, np.uint8)
    colour = np.zeros((40, 100, 3), np.uint8)
    colour[..., 0] = 255
    x = preprocess([grey, colour], tiny_cfg)
    assert x.shape == (2, 3, 32, 128) and x.dtype == torch.float32
    mean, std = torch.tensor(OPENAI_MEAN), torch.tensor(OPENAI_STD)
    assert torch.allclose(x[0, :, 5, 5], (128 / 255 - mean) / std, atol=1e-5)
    assert torch.allclose(x[1, :, 5, 5], (torch.tensor([1.0, 0, 0]) - mean) / std, atol=1e-5)
    with pytest.raises(ValueError, match="image 0: expected uint8"):
        preprocess([grey.astype(np.float32)], tiny_cfg)


@pytest.fixture(scope="module")
def full() -> CLIP4STR:
    return build_quietly(RecognizerConfig())


@pytest.mark.slow
class TestFullViTB16:
    """CLIP4STR-B (random weights) at batch 1 on CPU."""

    def test_parameter_counts_match_the_release(self, full):
        trainable = sum(p.numel() for p in full.parameters() if p.requires_grad) / 1e6
        frozen = sum(p.numel() for p in full.parameters() if not p.requires_grad) / 1e6
        # released vl4str_base.sh: 114 M trainable, 44.3 M frozen (77 text positions there, 16 here: -0.03 M)
        assert trainable == pytest.approx(114.0, abs=1.0) and frozen == pytest.approx(44.3, abs=0.1)

    def test_shapes(self, full):
        check_shapes(full, N=197, E=512, B=1)

    def test_gradients(self, full):
        check_gradients(full, B=1)
