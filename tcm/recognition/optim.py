"""Optimizer parameter groups of the recogniser, as released (reference/clip4str.md §7, [C] configure_optimizers).

Two parts: the CLIP towers (`image_encoder`, `text_encoder`) at the base learning rate, and every other parameter
(both decoders) at `cfg.decoder_lr_factor` (19) times it. No weight decay on parameters with ndim < 2, norms,
biases, the decoders' position queries and token embeddings (`pos_queries`, `text_embed`) and `logit_scale`;
weight decay on the rest (CLIP's positional embeddings included, as released). Frozen parameters (the text
embeddings and bottom blocks, requires_grad False) are left out.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tcm.optim import add_to_group
from tcm.recognition.config import RecognizerConfig

NO_DECAY_NAMES = ("pos_queries", "text_embed", "logit_scale")  # released `exclude` names beyond ndim/norm/bias


def _decays(name: str, param: nn.Parameter) -> bool:
    parts = name.split(".")
    if param.ndim < 2 or any(p in NO_DECAY_NAMES for p in parts) or "bias" in parts[-1]:
        return False
    return not any(p.startswith(("ln", "bn", "norm")) for p in parts)  # ln_1, ln_final, norm_q, ... (1-D anyway)


def param_groups(model: nn.Module, cfg: RecognizerConfig, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Groups for torch.optim.AdamW (released: betas (0.9, 0.98), eps 1e-6): `encoder/{decay,no_decay}` at `lr`,
    `decoder/{decay,no_decay}` at `lr * cfg.decoder_lr_factor`; each with `name`, `params`, `lr`, `weight_decay`.
    `model` is a CLIP4STR (anything with `image_encoder` and optionally `text_encoder` works)."""
    if cfg.decoder_lr_factor <= 0:
        raise ValueError(f"decoder_lr_factor {cfg.decoder_lr_factor} must be > 0 (RecognizerConfig)")
    encoder_ids = {id(p) for p in model.image_encoder.parameters()}
    text = getattr(model, "text_encoder", None)
    if text is not None:
        encoder_ids |= {id(p) for p in text.parameters()}
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part, factor = ("encoder", 1.0) if id(param) in encoder_ids else ("decoder", cfg.decoder_lr_factor)
        add_to_group(groups, part, _decays(name, param), param, lr * factor, weight_decay)
    return list(groups.values())
