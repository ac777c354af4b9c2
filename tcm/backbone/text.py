"""CLIP text tower with K learnable context tokens (CoOp-style), as TCM's `CLIPTextContextEncoder`.

The sequence is [SOT, c_1..c_K, class-prompt tokens..., EOT, pad] of length K + prompt_length; the language
prompt generator's cue (B, D) is added to every token embedding before the positional embedding; the output is
ln_final at the EOT position @ text_projection (reference/tcm.md §1.2-1.3). The transformer, embeddings, final
norm and projection are open_clip's `TextTransformer`, kept at `self.clip` with open_clip's parameter names.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from open_clip.tokenizer import tokenize
from open_clip.transformer import QuickGELU, TextTransformer
from torch import Tensor, nn

from tcm.config import ClipConfig


@lru_cache(maxsize=16)
def tokenize_prompt(text: str, length: int) -> Tensor:
    """CLIP BPE tokens of `text`, (1, length): SOT, tokens, EOT, zero padding (truncated with EOT last)."""
    return tokenize(text, context_length=length)  # (1, length) int64


class TextEncoder(nn.Module):
    """Frozen-by-default CLIP text transformer around a fixed class prompt with K learnable contexts.

    `contexts` (1, K, D) are prompt parameters (trained at the base learning rate, tcm/optim.py); everything
    under `self.clip` is the pretrained tower (learning-rate factor 0 by default = frozen).
    """

    def __init__(
        self, cfg: ClipConfig, num_prompts: int, class_prompt: str, prompt_length: int, context_init_std: float = 1.0
    ):
        super().__init__()
        K, L = num_prompts, num_prompts + prompt_length
        if num_prompts < 0 or prompt_length < 2:
            raise ValueError(f"num_prompts={num_prompts} must be >= 0 and prompt_length={prompt_length} >= 2")
        if L > cfg.text_context_length:
            raise ValueError(
                f"num_prompts + prompt_length = {L} exceeds CLIP's {cfg.text_context_length} positions "
                "(TCMConfig.num_prompts / prompt_length)"
            )
        self.clip = TextTransformer(
            context_length=L,  # positional table and causal mask truncated to the prompt (weights.py truncates 77)
            vocab_size=cfg.text_vocab_size,
            width=cfg.text_width,
            heads=cfg.text_heads,
            layers=cfg.text_layers,
            output_dim=cfg.embed_dim,
            act_layer=QuickGELU if cfg.quick_gelu else nn.GELU,
        )
        D = cfg.text_width
        self.contexts = nn.Parameter(torch.empty(1, K, D))
        # released ocrclip.py: torch's nn.init.trunc_normal_ with its defaults, std 1 cut at +-2 (not timm's 0.02
        # used for Linear weights); TCMConfig.context_init_std (the tiny preset's random towers use 0.02)
        s = context_init_std
        nn.init.trunc_normal_(self.contexts, mean=0.0, std=s, a=-2.0 * s, b=2.0 * s)
        tokens = tokenize_prompt(class_prompt, prompt_length)  # (1, prompt_length)
        self.register_buffer("prompt_tokens", tokens.clone(), persistent=False)  # derived from the config
        self.eot_index = K + int(tokens.argmax(dim=-1))  # EOT has the largest id; shifted by the K contexts
        self.num_prompts = K
        self.context_length = L
        self.embed_dim = cfg.embed_dim
        self.width = D

    def forward(self, cue: Tensor | None, batch_size: int) -> Tensor:
        """cue: (B, D) from the language prompt generator, or None. Returns text embeddings (B, 1, E)."""
        clip = self.clip
        emb = clip.token_embedding(self.prompt_tokens)  # (1, Lp, D)
        x = torch.cat([emb[:, :1], self.contexts, emb[:, 1:]], dim=1)  # (1, L, D): SOT, contexts, prompt
        if cue is not None:
            x = x + cue[:, None, :]  # (B, L, D): the cue is added to every token
        x = x + clip.positional_embedding  # (B or 1, L, D)
        x = clip.transformer(x, attn_mask=clip.attn_mask)  # (B or 1, L, D), causal
        x = clip.ln_final(x[:, self.eot_index])  # (B or 1, D): LayerNorm is per token, so select first
        x = x @ clip.text_projection  # (B or 1, E)
        return x[:, None, :].expand(batch_size, 1, self.embed_dim)  # (B, 1, E)
