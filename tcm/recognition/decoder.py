"""The PARSeq two-stream decoder with permutation language modelling (reference/clip4str.md §4).

One class serves both CLIP4STR branches. Token ids: [E] = 0, characters, [B], [P] (tcm/recognition/tokenizer.py).
Masks are float additive masks (0 = attend, -inf = masked) of shape (queries, keys).

Shapes: B batch, T decoding positions (max_label_length + 1 = 26), L context length (tokens fed to the content
stream, starting with [B]), Q queries, N memory tokens, E width (= CLIP embed_dim), C classes ([E] + charset).
"""

from __future__ import annotations

import math
from itertools import permutations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DecoderLayer(nn.Module):
    """Pre-LN two-stream layer. For each stream: x += SA(norm(x), kv = norm_c(content), mask); x += CrossAttn(
    norm1(x), memory); x += MLP(norm2(x)). The query stream uses norm_q and the query mask, the content stream the
    content mask; memory is used as given (already LayerNormed by the encoder)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(width, width * mlp_ratio)
        self.linear2 = nn.Linear(width * mlp_ratio, width)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.norm_q = nn.LayerNorm(width)
        self.norm_c = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def _stream(
        self, x: Tensor, x_norm: Tensor, kv: Tensor, memory: Tensor, mask: Tensor | None, padding: Tensor | None
    ) -> Tensor:
        attn = self.self_attn(x_norm, kv, kv, attn_mask=mask, key_padding_mask=padding, need_weights=False)[0]
        x = x + self.dropout1(attn)
        x = x + self.dropout2(self.cross_attn(self.norm1(x), memory, memory, need_weights=False)[0])
        mlp = self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(x)))))
        return x + self.dropout3(mlp)

    def forward(
        self,
        query: Tensor,
        content: Tensor,
        memory: Tensor,
        query_mask: Tensor | None,
        content_mask: Tensor | None,
        padding: Tensor | None,
        update_content: bool,
    ) -> tuple[Tensor, Tensor]:
        """padding: (B, L) additive key mask of the content tokens (-inf = ignored), or None."""
        content_norm = self.norm_c(content)
        query = self._stream(query, self.norm_q(query), content_norm, memory, query_mask, padding)
        if update_content:
            content = self._stream(content, content_norm, content_norm, memory, content_mask, padding)
        return query, content


class TokenEmbedding(nn.Module):
    """sqrt(E) * Embedding(ids)."""

    def __init__(self, num_tokens: int, width: int):
        super().__init__()
        self.embedding = nn.Embedding(num_tokens, width)
        self.scale = math.sqrt(width)

    def forward(self, ids: Tensor) -> Tensor:
        return self.scale * self.embedding(ids)


class PARSeqDecoder(nn.Module):
    """Content stream = [B] embedding, then pos_queries[:L-1] + embeddings of the context characters; query stream =
    position queries. Returns logits (B, Q, C) for the queries.

    Parameter names follow the released checkpoints (`layers.0.self_attn...`, `text_embed.embedding.weight`,
    `pos_queries`, `norm`, `head`)."""

    def __init__(
        self, width: int, depth: int, heads: int, mlp_ratio: int, dropout: float, num_tokens: int, num_classes: int,
        num_positions: int,
    ):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.text_embed = TokenEmbedding(num_tokens, width)
        self.pos_queries = nn.Parameter(torch.empty(1, num_positions, width))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """PARSeq: trunc-normal std 0.02 for linear/embedding weights and the position queries, zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_queries, std=0.02)

    def forward(
        self,
        tokens: Tensor,
        memory: Tensor,
        *,
        queries: Tensor | None = None,
        query_mask: Tensor | None = None,
        content_mask: Tensor | None = None,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """tokens (B, L) starting with [B]; memory (B, N, E); queries (1 or B, Q, E), default pos_queries[:, :L];
        query_mask (Q, L), content_mask (L, L) additive; padding_mask (B, L) bool, True = the key is ignored."""
        B, L = tokens.shape
        null_ctx = self.text_embed(tokens[:, :1])  # (B, 1, E): [B] has no position
        ctx = self.pos_queries[:, : L - 1] + self.text_embed(tokens[:, 1:])  # (B, L-1, E)
        content = self.dropout(torch.cat([null_ctx, ctx], dim=1))  # (B, L, E)
        if queries is None:
            queries = self.pos_queries[:, :L]
        query = self.dropout(queries.expand(B, -1, -1))  # (B, Q, E)
        padding = None
        if padding_mask is not None:  # additive like the masks (bool next to float masks is deprecated in torch)
            padding = torch.zeros(B, L, dtype=content.dtype, device=content.device)
            padding = padding.masked_fill(padding_mask, float("-inf"))  # (B, L)
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1  # the last layer does not update the content stream
            query, content = layer(query, content, memory, query_mask, content_mask, padding, update_content=not last)
        return self.head(self.norm(query))  # (B, Q, C)


# ------------------------------------------------------------------------------------------ permutations, masks


def generate_attn_masks(perm: Tensor) -> tuple[Tensor, Tensor]:
    """Content and query masks for one permutation `perm` (T + 2,) over positions [B]=0, characters 1..T, [E]=T+1
    (perm[0] is always 0).

    M[perm[i], perm[j]] = -inf for every j > i (a position sees only what precedes it in the permutation, and
    itself). content_mask = M[:-1, :-1] (L x L, L = T + 1: a content token sees itself). Then M's diagonal is set
    to -inf and query_mask = M[1:, :-1] (T + 1 x L): the query predicting position p sees [B] and the characters
    before p in the permutation, never its own target."""
    S = perm.shape[0]
    M = torch.zeros(S, S, device=perm.device)
    for i in range(S):
        M[perm[i], perm[i + 1 :]] = float("-inf")
    content_mask = M[:-1, :-1].clone()  # (S-1, S-1)
    M[torch.eye(S, dtype=torch.bool, device=perm.device)] = float("-inf")
    query_mask = M[1:, :-1]  # (S-1, S-1)
    return content_mask, query_mask


def _mirror_pool(num_chars: int) -> Tensor:
    """Every permutation of `num_chars` that comes before its own flip in lexicographic order: one representative
    of each mirrored pair (the canonical order first). (P, num_chars)"""
    kept, seen = [], set()
    for p in permutations(range(num_chars)):
        if p[::-1] not in seen:
            kept.append(p)
            seen.add(p)
    return torch.tensor(kept, dtype=torch.long)


def gen_tgt_perms(
    num_chars: int,
    perm_num: int = 6,
    forward: bool = True,
    mirrored: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The permutations of one training step, shared by the batch, for labels of up to `num_chars` characters:
    (K, num_chars + 2), each row starting with 0 ([B]) and ending with num_chars + 1 ([E]) except row 1.

    K = perm_num (fewer for very short labels): the canonical order (if `forward`), random orders without
    repetition, each followed by its flip (if `mirrored`); then row 1 is replaced by the reverse order with [E]
    right after [B] ([0, T+1, T, ..., 1]: [E] learnt from the null context, needed for NAR decoding). For labels of
    at most 4 characters the random orders are drawn without replacement from all permutations (one per mirrored
    pair); a 1-character label gets the canonical order only."""
    T = num_chars
    if T == 1:
        return torch.arange(3).unsqueeze(0)  # (1, 3)
    max_gen = perm_num // 2 if mirrored else perm_num  # orders to draw before flipping
    max_perms = math.factorial(T) // (2 if mirrored else 1)
    num_gen = min(max_gen, max_perms)
    perms = [torch.arange(T)] if forward else []
    if T < 5:
        pool = _mirror_pool(T) if mirrored else torch.tensor(list(permutations(range(T))), dtype=torch.long)
        if forward:
            pool = pool[1:]  # the canonical order is already in
        picks = torch.randperm(len(pool), generator=generator)[: num_gen - len(perms)]
        perms.extend(pool[picks])
    else:
        perms.extend(torch.randperm(T, generator=generator) for _ in range(num_gen - len(perms)))
    P = torch.stack(perms)  # (k, T)
    if mirrored:
        P = torch.stack([P, P.flip(-1)], dim=1).reshape(-1, T)  # (2k, T): each order followed by its flip
    K = P.shape[0]
    bos = torch.zeros(K, 1, dtype=torch.long)
    eos = torch.full((K, 1), T + 1, dtype=torch.long)
    P = torch.cat([bos, P + 1, eos], dim=1)  # (K, T + 2): positions 1..T for the characters
    if K > 1:
        P[1, 1:] = T + 1 - torch.arange(T + 1)  # [E], T, ..., 1
    return P


def causal_mask(size: int, device: torch.device | str | None = None) -> Tensor:
    """Left-to-right additive mask (size, size): row i sees columns 0..i."""
    return torch.triu(torch.full((size, size), float("-inf"), device=device), 1)


def cloze_query_mask(queries: int, L: int, device: torch.device | str | None = None) -> Tensor:
    """Refinement query mask (queries, L): the query for position i sees [B] and every character except its own
    (column i + 1): the causal mask with everything above the first superdiagonal unmasked."""
    mask = torch.zeros(queries, L, device=device)
    rows = torch.arange(min(queries, L - 1), device=device)
    mask[rows, rows + 1] = float("-inf")
    return mask
