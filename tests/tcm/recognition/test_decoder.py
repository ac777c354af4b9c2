"""Permutation masks and permutations as released; the canonical permutation is plain causal decoding."""

import itertools

import torch

from tcm.recognition.decoder import (
    PARSeqDecoder,
    causal_mask,
    cloze_query_mask,
    gen_tgt_perms,
    generate_attn_masks,
)

X = float("-inf")


def as_bool(mask: torch.Tensor) -> list[list[int]]:
    return (mask == X).int().tolist()  # 1 = masked


def test_masks_of_a_three_character_word_by_hand():
    # positions: 0 = [B], 1..3 = c1..c3, 4 = [E]; content rows/cols 0..3 ([B], c1, c2, c3); query rows = targets
    # c1, c2, c3, [E]
    content, query = generate_attn_masks(torch.tensor([0, 1, 2, 3, 4]))  # canonical
    assert as_bool(content) == [
        [0, 1, 1, 1],  # [B] sees itself only
        [0, 0, 1, 1],  # c1 sees [B], c1
        [0, 0, 0, 1],
        [0, 0, 0, 0],
    ]
    assert as_bool(query) == [
        [0, 1, 1, 1],  # predicting c1: [B] only
        [0, 0, 1, 1],  # predicting c2: [B], c1
        [0, 0, 0, 1],
        [0, 0, 0, 0],  # predicting [E]: everything
    ]
    content, query = generate_attn_masks(torch.tensor([0, 4, 3, 2, 1]))  # reverse, [E] right after [B]
    assert as_bool(content) == [
        [0, 1, 1, 1],
        [0, 0, 0, 0],  # c1 comes last: sees everything
        [0, 1, 0, 0],  # c2 sees [B], c3 and itself
        [0, 1, 1, 0],  # c3 sees [B] and itself
    ]
    assert as_bool(query) == [
        [0, 1, 0, 0],  # predicting c1: [B], c2, c3
        [0, 1, 1, 0],  # predicting c2: [B], c3
        [0, 1, 1, 1],  # predicting c3: [B] only
        [0, 1, 1, 1],  # predicting [E]: null context
    ]
    content, query = generate_attn_masks(torch.tensor([0, 2, 3, 1, 4]))  # c2, c3, c1, then [E]
    assert as_bool(content) == [
        [0, 1, 1, 1],
        [0, 0, 0, 0],  # c1 is third: sees [B], c2, c3, itself
        [0, 1, 0, 1],  # c2 first: [B], itself
        [0, 1, 0, 0],  # c3 second: [B], c2, itself
    ]
    assert as_bool(query) == [
        [0, 1, 0, 0],  # predicting c1: [B], c2, c3
        [0, 1, 1, 1],  # predicting c2: [B]
        [0, 1, 0, 1],  # predicting c3: [B], c2
        [0, 0, 0, 0],  # predicting [E]: everything
    ]


def test_canonical_masks_are_causal_and_the_cloze_mask_hides_only_the_own_character():
    content, query = generate_attn_masks(torch.arange(7))
    assert torch.equal(content, causal_mask(6)) and torch.equal(query, causal_mask(6))
    assert as_bool(cloze_query_mask(4, 4)) == [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]]


def is_perm(row: torch.Tensor) -> bool:
    return sorted(row.tolist()) == list(range(len(row)))


def test_permutations_as_released():
    torch.manual_seed(0)
    T = 7
    perms = gen_tgt_perms(T, 6, forward=True, mirrored=True)
    assert perms.shape == (6, T + 2) and all(is_perm(p) for p in perms)
    assert (perms[:, 0] == 0).all()
    assert perms[0].tolist() == list(range(T + 2))  # canonical
    assert perms[1].tolist() == [0, T + 1, *range(T, 0, -1)]  # reverse with [E] right after [B]
    for k in (2, 4):  # random pairs: the second is the first's flip over the characters; [E] last
        assert perms[k + 1, 1:-1].tolist() == perms[k, 1:-1].flip(0).tolist()
        assert perms[k, -1] == perms[k + 1, -1] == T + 1
    assert len({tuple(p.tolist()) for p in perms}) == 6


def test_short_labels_draw_distinct_pairs_and_one_character_gets_one_order():
    assert gen_tgt_perms(1).tolist() == [[0, 1, 2]]
    two = gen_tgt_perms(2)
    assert two.tolist() == [[0, 1, 2, 3], [0, 3, 2, 1]]  # 2 chars: one mirrored pair only
    for seed in range(5):
        torch.manual_seed(seed)
        four = gen_tgt_perms(4)
        assert four.shape == (6, 6) and all(is_perm(p) for p in four)
        orders = {tuple(p.tolist()) for p in four[[0, 2, 3, 4, 5], 1:-1]}
        assert len(orders) == 5  # no repeated order among the non-overwritten rows
        assert all(tuple(p) in set(itertools.permutations(range(1, 5))) for p in orders)


def tiny_decoder(seed: int = 0) -> PARSeqDecoder:
    torch.manual_seed(seed)
    return PARSeqDecoder(32, 1, 2, 4, 0.1, num_tokens=8, num_classes=6, num_positions=6).eval()


def test_canonical_permutation_reproduces_step_by_step_decoding():
    decoder = tiny_decoder()
    B, N, E = 3, 9, 32
    memory = torch.randn(B, N, E)
    tgt_in = torch.tensor([[6, 1, 2, 3, 4], [6, 5, 5, 1, 2], [6, 2, 0, 7, 7]])  # [B] + context ([B]=6, [P]=7)
    L = tgt_in.shape[1]
    content, query = generate_attn_masks(torch.arange(L + 1))
    with torch.no_grad():
        full = decoder(tgt_in, memory, query_mask=query, content_mask=content)  # (B, L, C) at once
        steps = [
            decoder(tgt_in[:, : i + 1], memory, queries=decoder.pos_queries[:, i : i + 1])  # context up to i
            for i in range(L)
        ]
    assert torch.allclose(full, torch.cat(steps, dim=1), atol=1e-5)
    # and the masks matter: without them position 0 would see the whole context
    with torch.no_grad():
        unmasked = decoder(tgt_in, memory)
    assert not torch.allclose(unmasked[:, 0], full[:, 0], atol=1e-3)


def test_padding_keys_are_ignored():
    decoder = tiny_decoder()
    memory = torch.randn(2, 5, 32)
    a = torch.tensor([[6, 1, 2, 0, 7], [6, 1, 2, 0, 3]])  # same up to [E]; different garbage after it
    padding = (a == 0) | (a == 7)
    padding[1, 4] = True
    content, query = generate_attn_masks(torch.tensor([0, 5, 4, 3, 2, 1]))  # every query sees later tokens
    memory[1] = memory[0]
    with torch.no_grad():
        out = decoder(a, memory, query_mask=query, content_mask=content, padding_mask=padding)
        unpadded = decoder(a, memory, query_mask=query, content_mask=content)
    assert torch.allclose(out[0], out[1], atol=1e-6)
    assert not torch.allclose(unpadded[0], unpadded[1], atol=1e-4)
