"""TCM's prompt modules: the language prompt generator, the DenseCLIP context decoder, and the two ways TCM uses
that decoder (visual prompt generator; text-side context refinement). reference/tcm.md §1.3-1.5.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LanguagePromptGenerator(nn.Module):
    """Global image vector (B, E) -> conditional cue cc (B, D) added to every prompt token.

    cc = LN(ReLU(LN(I) W1 + b1)) W2 + b2 with W1 (E, E), W2 (E, D) (TCM's `PromptGenerator`).
    """

    def __init__(self, embed_dim: int, text_width: int):
        super().__init__()
        E, D = embed_dim, text_width
        self.net = nn.Sequential(nn.LayerNorm(E), nn.Linear(E, E), nn.ReLU(inplace=True), nn.LayerNorm(E), nn.Linear(E, D))

    def forward(self, global_feat: Tensor) -> Tensor:
        return self.net(global_feat)  # (B, E) -> (B, D)


class ContextDecoder(nn.Module):
    """DenseCLIP's context decoder: queries attend to memory through N pre-LN transformer decoder layers.

    queries (B, Nq, E) are projected LN -> Linear to width W; memory (B, Nm, E) LN -> Linear -> LN (the decoder
    layers do not normalise the memory themselves); each layer is self-attention over the queries, cross-attention
    to the memory and an MLP (4W, GELU), pre-LN with dropout; the output goes LN -> Linear back to E.
    """

    def __init__(self, embed_dim: int, width: int, heads: int, layers: int, dropout: float):
        super().__init__()
        E, W = embed_dim, width
        self.query_proj = nn.Sequential(nn.LayerNorm(E), nn.Linear(E, W))
        self.memory_proj = nn.Sequential(nn.LayerNorm(E), nn.Linear(E, W), nn.LayerNorm(W))
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                d_model=W,
                nhead=heads,
                dim_feedforward=4 * W,  # DenseCLIP / TCM: MLP ratio 4 (FFN 1024 at width 256)
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,  # pre-LN, as DenseCLIP's decoder layer
            )
            for _ in range(layers)
        )
        self.out_proj = nn.Sequential(nn.LayerNorm(W), nn.Linear(W, E))

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
