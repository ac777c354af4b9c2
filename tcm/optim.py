"""Optimizer parameter groups with learning-rate factors per part and no weight decay where decay does harm.

Parts: the CLIP image encoder (`image_encoder_lr_factor`, 0.1 in every TCM config), the pretrained CLIP text tower
`text_encoder.clip` (`text_encoder_lr_factor`, 0 = frozen in every TCM config) and everything else at the base
rate (learnable contexts, prompt generators, decoders, gammas, neck, head; reference/tcm.md §2).

A factor of 0 freezes the part: its parameters get `requires_grad=False` and are left out of the groups (gradients
still flow *through* a frozen text tower to the contexts and the language prompt generator).

No weight decay on: every parameter with ndim <= 1 (biases, BatchNorm/LayerNorm weights, the gamma scalars and
vectors), the positional embeddings (CLIP/timm convention) and the learnable contexts (prompt vectors, pulling
them towards 0 has no meaning). Everything else (conv/linear weights, token embedding) is decayed.
"""

from __future__ import annotations

from typing import Any

from torch import nn

NO_DECAY_NAMES = ("positional_embedding", "contexts")


def _decays(name: str, param: nn.Parameter) -> bool:
    return param.ndim > 1 and name.split(".")[-1] not in NO_DECAY_NAMES


def param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    image_encoder_lr_factor: float = 0.1,  # TCM configs: backbone lr_mult 0.1
    text_encoder_lr_factor: float = 0.0,  # TCM configs: text_encoder lr_mult 0 (frozen)
) -> list[dict[str, Any]]:
    """Parameter groups for torch.optim: one per (part, decay) with params, lr, weight_decay and a `name`.

    `model` is a `Detector` (anything with `image_encoder` and optionally `text_encoder.clip` works).
    Parameters already frozen (requires_grad False) stay frozen and are left out.
    """
    parts: dict[str, tuple[float, set[int]]] = {
        "image_encoder": (image_encoder_lr_factor, {id(p) for p in model.image_encoder.parameters()}),
    }
    text = getattr(model, "text_encoder", None)
    if text is not None:
        parts["text_encoder"] = (text_encoder_lr_factor, {id(p) for p in text.clip.parameters()})

    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        part, factor = "other", 1.0
        for part_name, (part_factor, ids) in parts.items():
            if id(param) in ids:
                part, factor = part_name, part_factor
                break
        if factor < 0:
            raise ValueError(f"{part} learning-rate factor {factor} is negative (tcm/optim.py param_groups)")
        if factor == 0.0:
            param.requires_grad_(False)
        if not param.requires_grad:
            continue
        add_to_group(groups, part, _decays(name, param), param, base_lr * factor, weight_decay)
    return list(groups.values())


def add_to_group(
    groups: dict[tuple[str, bool], dict[str, Any]], part: str, decay: bool, param: Any, lr: float, weight_decay: float
) -> None:
    """Put `param` in the (part, decay) group, creating it named `part/decay|no_decay` with its lr and decay."""
    key = (part, decay)
    if key not in groups:
        groups[key] = {
            "name": f"{part}/{'decay' if decay else 'no_decay'}",
            "params": [],
            "lr": lr,
            "weight_decay": weight_decay if decay else 0.0,
        }
    groups[key]["params"].append(param)
