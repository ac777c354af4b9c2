"""The TCM detector: CLIP image encoder -> (language prompt generator -> text encoder -> visual prompt generator
-> context decoder -> score map P, concatenated to C5) -> head (which holds its own neck).

Loss and decoding are explicit calls: `Detector.loss(outputs, targets)` here, `Codec.decode` in tcm/heads.
Normalisation stays outside the module (`normalize`), so the exported network takes normalised float images.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tcm.backbone.image import ImageEncoder
from tcm.backbone.text import TextEncoder
from tcm.config import DetectorConfig
from tcm.matching import AuxLoss, matching_loss, score_map
from tcm.prompts import LanguagePromptGenerator, TextContextDecoder, VisualPromptGenerator


def normalize(images: Tensor, cfg: DetectorConfig) -> Tensor:
    """uint8 (or float 0..255) RGB images (B, 3, H, W) -> float32 normalised with cfg's mean/std."""
    mean = torch.tensor(cfg.pixel_mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.pixel_std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float() - mean) / std


class Detector(nn.Module):
    """Scene-text detector on CLIP with the TCM prompt/matching parts, or the baseline (`text_encoder=None`).

    forward(images (B, 3, H, W) normalised, H and W multiples of 32) -> dict, same keys in train and eval mode:
    - DB head:  `prob_logits` (B, 1, H, W) logits of the probability map, `thresh` (B, 1, H, W) in [0, 1].
    - PAN head: `text_logits`, `kernel_logits` (B, 1, H/4, W/4) logits, `embedding` (B, emb_dim=4, H/4, W/4).
    - FCE head: per stride s in (8, 16, 32): `cls_s{s}` (B, 4, H/s, W/s) text-region / text-centre-region
      logits (bg, fg pairs), `reg_s{s}` (B, 2 (2k + 1), H/s, W/s) Fourier coefficients (k = fourier_degree = 5
      -> 22 channels).
    - TCM on: `score_map` (B, 1, H/32, W/32), the cosine of the prompted pixels with the text embedding.
    The head keys are the heads' own (tcm/heads/*.py); tests/tcm/test_detector.py checks these shapes at the tiny
    and the full RN50 size.

    Channels into the head: C2..C5 of the image encoder (RN50: 256, 512, 1024, 2048), C5 + 1 with TCM on.
    """

    def __init__(
        self,
        image_encoder: ImageEncoder,
        head: nn.Module,
        *,
        text_encoder: TextEncoder | None = None,
        prompt_generator: LanguagePromptGenerator | None = None,
        visual_prompt_generator: VisualPromptGenerator | None = None,
        context_decoder: TextContextDecoder | None = None,
        tau: float = 0.07,  # TCMConfig.tau
        aux_loss_weight: float = 1.0,  # TCMConfig.aux_loss_weight
        aux_loss: AuxLoss = "balanced_bce",  # per head as released (tcm.build.aux_loss_kind)
    ):
        super().__init__()
        tcm_parts = (prompt_generator, visual_prompt_generator, context_decoder)
        if text_encoder is None and any(p is not None for p in tcm_parts):
            raise ValueError("TCM parts given without a text encoder (tcm/detector.py)")
        if (text_encoder is not None) != (image_encoder.dense is not None):
            raise ValueError("the image encoder must be dense (attention pool kept) exactly when TCM is on")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.prompt_generator = prompt_generator
        self.visual_prompt_generator = visual_prompt_generator
        self.context_decoder = context_decoder
        self.head = head
        self.tau = tau
        self.aux_loss_weight = aux_loss_weight
        self.aux_loss = aux_loss

    @property
    def tcm_enabled(self) -> bool:
        return self.text_encoder is not None

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        B = images.shape[0]
        feats = self.image_encoder(images)
        c2, c3, c4, c5 = feats.pyramid
        if self.text_encoder is None:
            return dict(self.head([c2, c3, c4, c5]))
        global_feat, pixels = feats.global_feat, feats.feature_map  # (B, E), (B, E, H/32, W/32)
        cue = self.prompt_generator(global_feat) if self.prompt_generator is not None else None  # (B, D)
        text = self.text_encoder(cue, B)  # (B, 1, E)
        prompted = pixels
        if self.visual_prompt_generator is not None:
            prompted = self.visual_prompt_generator(pixels, text)  # (B, E, H/32, W/32)
        if self.context_decoder is not None:
            text = self.context_decoder(text, global_feat, pixels)  # (B, 1, E): attends to the pre-VPG context
        score = score_map(prompted, text)  # (B, 1, H/32, W/32)
        c5 = torch.cat([c5, score], dim=1)  # (B, C5 + 1, H/32, W/32)
        outputs = dict(self.head([c2, c3, c4, c5]))
        outputs["score_map"] = score
        return outputs

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """Head losses + `loss_aux` (TCM on: aux_loss_weight * the auxiliary loss `aux_loss` of score_map / tau
        against aux_text under aux_mask, tcm.matching) + `loss` (the total to backpropagate)."""
        head_outputs = {k: v for k, v in outputs.items() if k != "score_map"}
        losses = dict(self.head.loss(head_outputs, targets))
        if "loss" not in losses:
            raise KeyError(f"{type(self.head).__name__}.loss returned no 'loss' total (docs/CONTRACTS.md)")
        if self.text_encoder is not None:
            aux = matching_loss(
                outputs["score_map"], targets["aux_text"], targets["aux_mask"], self.tau, self.aux_loss
            )
            losses["loss_aux"] = self.aux_loss_weight * aux
            losses["loss"] = losses["loss"] + losses["loss_aux"]
        return losses
