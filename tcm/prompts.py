"""TCM's prompt modules: the language prompt generator, the DenseCLIP context decoder, and the two ways TCM uses
that decoder (visual prompt generator; text-side context refinement). reference/tcm.md §1.3-1.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LanguagePromptGenerator(nn.Module):
    """Global image vector (B, E) -> conditional cue cc (B, D) added to every prompt token.

    cc = LN(ReLU(LN(I) W1 + b1)) W2 + b2 with W1 (E, E), W2 (E, D) (TCM's `PromptGenerator`).
    """

    def __init__(self, embed_dim: int, text_width: int):
        super().__init__()
        E, D = embed_dim, text_width
        self.net = nn.Sequential(nn.LayerNorm(E), nn.Linear(E, E), nn.ReLU(inplace=True), nn.LayerNorm(E), nn.Linear(E, D))
        init_trunc_normal(self)  # released PromptGenerator._init_weights

    def forward(self, global_feat: Tensor) -> Tensor:
        return self.net(global_feat)  # (B, E) -> (B, D)


def init_trunc_normal(module: nn.Module) -> None:
    """Linear weights trunc-normal(std 0.02), biases 0; LayerNorm weight 1, bias 0 (the released
    `ContextDecoder._init_weights` / `PromptGenerator._init_weights`, models.py)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)  # cut at +-2 absolute (timm's), i.e. 100 std: no cut
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Attention(nn.Module):
    """Multi-head attention as released (models.py `Attention`): separate q/k/v projections WITHOUT bias, no
    dropout on the attention weights, an output projection (with bias) followed by dropout. Unlike
    nn.MultiheadAttention (q/k/v bias, attention-weight dropout: with one memory token the softmax is 1 and a
    0.1 dropout there zeroes the whole cross-attention output one time in ten)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"decoder width {width} is not divisible by its {heads} heads (TCMConfig)")
        self.heads = heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.proj = nn.Linear(width, width)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, query: Tensor, memory: Tensor) -> Tensor:
        """query (B, N, W), memory (B, M, W) -> (B, N, W)."""
        B, N, W = query.shape
        M = memory.shape[1]
        h = self.heads
        q = self.q_proj(query).reshape(B, N, h, W // h).transpose(1, 2)  # (B, h, N, W/h)
        k = self.k_proj(memory).reshape(B, M, h, W // h).transpose(1, 2)  # (B, h, M, W/h)
        v = self.v_proj(memory).reshape(B, M, h, W // h).transpose(1, 2)  # (B, h, M, W/h)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, W/h), scale (W/h)^-0.5, no dropout
        x = x.transpose(1, 2).reshape(B, N, W)  # heads back side by side
        return self.proj_drop(self.proj(x))


class DecoderLayer(nn.Module):
    """Pre-LN decoder layer as released (models.py `TransformerDecoderLayer`): x += SelfAttn(LN x);
    x += CrossAttn(LN x, memory) (the memory is not normalised here: memory_proj ends with a LayerNorm);
    x += Dropout(MLP(LN x)), MLP = Linear(W, 4W), GELU, Dropout, Linear(4W, W)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        W = width
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(W), nn.LayerNorm(W), nn.LayerNorm(W)
        self.self_attn = Attention(W, heads, dropout)
        self.cross_attn = Attention(W, heads, dropout)
        # MLP ratio 4 (FFN 1024 at width 256, DenseCLIP / TCM)
        self.mlp = nn.Sequential(nn.Linear(W, 4 * W), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * W, W))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        """x (B, N, W), memory (B, M, W) -> (B, N, W)."""
        y = self.norm1(x)
        x = x + self.self_attn(y, y)
        x = x + self.cross_attn(self.norm2(x), memory)
        return x + self.dropout(self.mlp(self.norm3(x)))


class ContextDecoder(nn.Module):
    """DenseCLIP's context decoder: queries attend to memory through N pre-LN decoder layers.

    queries (B, Nq, E) are projected LN -> Linear to width W; memory (B, Nm, E) LN -> Linear -> LN (the decoder
    layers do not normalise the memory themselves); each layer is self-attention over the queries, cross-attention
    to the memory and an MLP (4W, GELU), pre-LN with dropout (`DecoderLayer`); the output goes LN -> Linear back
    to E. Initialised as released: trunc-normal(0.02) Linear weights, zero biases.
    """

    def __init__(self, embed_dim: int, width: int, heads: int, layers: int, dropout: float):
        super().__init__()
        E, W = embed_dim, width
        self.query_proj = nn.Sequential(nn.LayerNorm(E), nn.Linear(E, W))
        self.memory_proj = nn.Sequential(nn.LayerNorm(E), nn.Linear(E, W), nn.LayerNorm(W))
        self.layers = nn.ModuleList(DecoderLayer(W, heads, dropout) for _ in range(layers))
        self.out_proj = nn.Sequential(nn.LayerNorm(W), nn.Linear(W, E))
        init_trunc_normal(self)

    def forward(self, queries: Tensor, memory: Tensor) -> Tensor:
        x = self.query_proj(queries)  # (B, Nq, W)
        mem = self.memory_proj(memory)  # (B, Nm, W)
        for layer in self.layers:
            x = layer(x, mem)  # (B, Nq, W)
        return self.out_proj(x)  # (B, Nq, E)


class VisualPromptGenerator(nn.Module):
    """Pixels attend to the text embedding: I_hat = I + gamma * ContextDecoder(q=I, kv=t), gamma a scalar."""

    def __init__(self, embed_dim: int, width: int, heads: int, layers: int, dropout: float, gamma_init: float):
        super().__init__()
        self.decoder = ContextDecoder(embed_dim, width, heads, layers, dropout)
        self.gamma = nn.Parameter(torch.tensor(gamma_init))  # scalar; small so I_hat starts near I

    def forward(self, pixels: Tensor, text: Tensor) -> Tensor:
        """pixels (B, E, h, w), text (B, K, E) -> I_hat (B, E, h, w)."""
        B, E, h, w = pixels.shape
        queries = pixels.flatten(2).transpose(1, 2)  # (B, hw, E)
        prompt = self.decoder(queries, text)  # (B, hw, E)
        prompt = prompt.transpose(1, 2).reshape(B, E, h, w)  # (B, E, h, w)
        return pixels + self.gamma * prompt


class TextContextDecoder(nn.Module):
    """Text attends to the ORIGINAL visual context [global; pixels]: t = t + gamma (.) ContextDecoder(q=t, kv=ctx),
    gamma a vector over E (the released code's DenseCLIP context decoder, reference/tcm.md §1.4)."""

    def __init__(self, embed_dim: int, width: int, heads: int, layers: int, dropout: float, gamma_init: float):
        super().__init__()
        self.decoder = ContextDecoder(embed_dim, width, heads, layers, dropout)
        self.gamma = nn.Parameter(torch.full((embed_dim,), gamma_init))  # (E,)

    def forward(self, text: Tensor, global_feat: Tensor, pixels: Tensor) -> Tensor:
        """text (B, K, E), global_feat (B, E), pixels (B, E, h, w) -> refined text (B, K, E)."""
        context = torch.cat([global_feat[:, None, :], pixels.flatten(2).transpose(1, 2)], dim=1)  # (B, 1 + hw, E)
        return text + self.gamma * self.decoder(text, context)  # (B, K, E)
