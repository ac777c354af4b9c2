import pytest
import torch

from tcm.build import build_detector
from tcm.config import DetectorConfig
from tcm.optim import param_groups


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_detector(DetectorConfig.tiny(), pretrained=False)


def by_name(model, groups) -> dict[str, dict]:
    """parameter name -> the group holding it."""
    ids = {id(p): n for n, p in model.named_parameters()}
    return {ids[id(p)]: g for g in groups for p in g["params"]}


def test_lr_factors_and_frozen_text_tower(model):
    groups = param_groups(model, base_lr=1e-3, weight_decay=1e-4)
    where = by_name(model, groups)
    assert where["image_encoder.resnet.layer1.0.conv1.weight"]["lr"] == pytest.approx(1e-4)
    assert where["head.neck.laterals.0.weight"]["lr"] == pytest.approx(1e-3)
    for name in ("text_encoder.contexts", "prompt_generator.net.1.weight", "visual_prompt_generator.gamma",
                 "context_decoder.decoder.layers.0.mlp.0.weight"):
        assert where[name]["lr"] == pytest.approx(1e-3), name
    text_tower = [n for n, _ in model.named_parameters() if n.startswith("text_encoder.clip.")]
    assert text_tower and not any(n in where for n in text_tower)  # left out of every group
    assert not any(p.requires_grad for p in model.text_encoder.clip.parameters())
    assert model.text_encoder.contexts.requires_grad
    # every trainable parameter is in exactly one group
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == sum(1 for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(groups)
    assert {g["name"] for g in optimizer.param_groups} >= {"image_encoder/decay", "other/no_decay"}


def test_no_weight_decay_on_norms_biases_gammas_embeddings(model):
    where = by_name(model, param_groups(model, 1e-3, 0.05, text_encoder_lr_factor=0.5))
    no_decay = [
        "image_encoder.resnet.bn1.weight",  # BatchNorm
        "image_encoder.resnet.attnpool.q_proj.bias",  # bias
        "image_encoder.resnet.attnpool.positional_embedding",
        "text_encoder.clip.ln_final.weight",  # LayerNorm
        "text_encoder.clip.positional_embedding",
        "text_encoder.contexts",
        "visual_prompt_generator.gamma",  # scalar
        "context_decoder.gamma",  # vector
    ]
    for name in no_decay:
        assert where[name]["weight_decay"] == 0.0, name
    for name in ("image_encoder.resnet.conv1.weight", "text_encoder.clip.token_embedding.weight",
                 "text_encoder.clip.text_projection", "prompt_generator.net.1.weight"):
        assert where[name]["weight_decay"] == 0.05, name
    assert where["text_encoder.clip.ln_final.weight"]["lr"] == pytest.approx(5e-4)  # trainable at factor 0.5


def test_baseline_and_zero_image_factor(model):
    baseline = build_detector(DetectorConfig.tiny(enabled=False), pretrained=False)
    groups = param_groups(baseline, 1e-3, 0.0, image_encoder_lr_factor=0.0)
    assert {g["name"].split("/")[0] for g in groups} == {"other"}
    assert not any(p.requires_grad for p in baseline.image_encoder.parameters())
    with pytest.raises(ValueError, match="negative"):
        param_groups(model, 1e-3, 0.0, image_encoder_lr_factor=-1.0)
