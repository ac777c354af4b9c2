"""CLIP towers of the recogniser: open_clip's ViT image tower (all tokens) and text tower (all tokens, context 16).

Both keep open_clip's (= OpenAI's) parameter names, so `tcm/weights.py` loads ViT-B-16.pt or an open_clip state
dict into them: image keys `visual.*` -> `ImageEncoder.visual`, text keys -> `TextEncoder.clip`
(reference/clip4str.md §2.1, §3, §10).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from open_clip.tokenizer import tokenize
from open_clip.transformer import QuickGELU, TextTransformer, VisionTransformer
from torch import Tensor, nn

from tcm.recognition.charset import CharsetAdapter
from tcm.recognition.config import RecognizerConfig
from tcm.recognition.tokenizer import Tokenizer


@lru_cache(maxsize=1 << 16)
def _caption_ids(caption: str, context_length: int) -> tuple[int, ...]:
    """CLIP BPE ids of one caption (cached: predicted words repeat, and BPE text cleaning costs ~0.5 ms each)."""
    return tuple(tokenize([caption], context_length=context_length)[0].tolist())


def caption_tokens(captions: Sequence[str], context_length: int) -> Tensor:
    """CLIP BPE ids (B, Lc) int64 on CPU: SOT, tokens, EOT, zero padding; too long = truncated with EOT last."""
    return torch.tensor([_caption_ids(c, context_length) for c in captions], dtype=torch.long)  # (B, Lc)


def prediction_tokens(ids, tokenizer: Tokenizer, adapter: CharsetAdapter, context_length: int) -> Tensor:
    """Greedy class ids (B, T) (a tensor or numpy array) -> the caption tokens (B, Lc) the text encoder reads: the
    string cut at its first [E], through `adapter` (lowercase alphanumerics), then CLIP's BPE."""
    return caption_tokens(tokenizer.ids_to_texts(ids, adapter), context_length)


class ImageEncoder(nn.Module):
    """images (B, 3, H, W) normalised -> memory (B, N, E): every token (CLS + patches) after ln_post and @ proj.

    ViT-B/16 at 224x224: (B, 197, 512). Tiny (32x128, 8x8 patches): (B, 65, 64). Fully trainable (CLIP4STR
    freezes no image layer: image_freeze_nlayer -1)."""

    def __init__(self, cfg: RecognizerConfig):
        super().__init__()
        self.visual = VisionTransformer(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            width=cfg.vision_width,
            layers=cfg.vision_layers,
            heads=cfg.vision_width // cfg.vision_head_width,
            mlp_ratio=4.0,  # CLIP ViTs
            output_dim=cfg.embed_dim,
            pool_type="none",  # keep every token: ln_post and proj then apply to all of them
            act_layer=QuickGELU if cfg.quick_gelu else nn.GELU,
        )
        self.num_tokens = cfg.num_memory_tokens
        self.embed_dim = cfg.embed_dim

    def forward(self, images: Tensor) -> Tensor:
        return self.visual(images)  # (B, N, E)


class TextEncoder(nn.Module):
    """CLIP text transformer over lowercase captions: tokens (B, Lc) -> features (B, Lc, E) for every position
    (Lc = context 16: ViT-B/16 (B, 16, 512), tiny (B, 16, 64)).

    token_embedding + positional_embedding[:Lc] -> causal blocks (mask[:Lc, :Lc]) -> ln_final -> @ text_projection,
    no pooling; padding tokens are not masked (only the causal mask applies), as released. The tower is built with
    Lc positions: loading a 77-position checkpoint slices its table to the first Lc rows (tcm/weights.py); the
    causal mask open_clip builds for Lc equals the 77x77 one sliced.

    Frozen (requires_grad False, kept in eval mode by `train()`): with N = `text_freeze_layers` >= 0, the token and
    position embeddings and blocks 0..N-1; with N >= layers, the whole tower including ln_final and the projection.
    """

    def __init__(self, cfg: RecognizerConfig):
        super().__init__()
        self.clip = TextTransformer(
            context_length=cfg.text_context_length,
            vocab_size=cfg.text_vocab_size,
            width=cfg.text_width,
            heads=cfg.text_heads,
            layers=cfg.text_layers,
            output_dim=cfg.embed_dim,
            act_layer=QuickGELU if cfg.quick_gelu else nn.GELU,
        )
        self.context_length = cfg.text_context_length
        self.frozen_modules: list[nn.Module] = []
        N = cfg.text_freeze_layers
        if N >= 0:
            clip = self.clip
            self.frozen_modules = [clip.token_embedding, *clip.transformer.resblocks[:N]]
            frozen_params = [clip.positional_embedding]
            if N >= cfg.text_layers:
                self.frozen_modules += [clip.ln_final]
                frozen_params.append(clip.text_projection)
            for module in self.frozen_modules:
                module.requires_grad_(False)
            for param in frozen_params:
                param.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        for module in self.frozen_modules:
            module.eval()  # frozen blocks stay in eval mode (released `_freeze_backbones`)
        return self

    def tokenize(self, captions: Sequence[str], device: torch.device | str | None = None) -> Tensor:
        """CLIP BPE ids (B, Lc): SOT, tokens, EOT, zero padding; too long = truncated with EOT last."""
        return caption_tokens(captions, self.context_length).to(device)  # (B, Lc)

    def forward(self, tokens: Tensor) -> Tensor:
        clip = self.clip
        B, Lc = tokens.shape
        x = clip.token_embedding(tokens) + clip.positional_embedding[:Lc]  # (B, Lc, D)
        x = clip.transformer(x, attn_mask=clip.attn_mask[:Lc, :Lc])  # (B, Lc, D), causal
        return clip.ln_final(x) @ clip.text_projection  # (B, Lc, E): every position, no pooling
