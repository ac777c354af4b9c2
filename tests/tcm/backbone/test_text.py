import pytest
import torch

from tcm.backbone.text import TextEncoder, tokenize_prompt
from tcm.config import DetectorConfig, TCMConfig


@pytest.fixture(autouse=True)
def one_thread():
    """Small ops on 2 shared cores run far faster single-threaded (no OpenMP contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CLIP = DetectorConfig.tiny().clip
PROMPT = TCMConfig().class_prompt


def make(K: int, seed: int = 0) -> TextEncoder:
    torch.manual_seed(seed)
    return TextEncoder(CLIP, num_prompts=K, class_prompt=PROMPT, prompt_length=14).eval()


def test_prompt_tokenises_to_sot_words_eot():
    tokens = tokenize_prompt(PROMPT, 14)
    assert tokens.shape == (1, 14)
    assert tokens[0, 0] == 49406 and tokens[0, -1] == 49407  # the released prompt fills all 14 positions
    short = tokenize_prompt("text", 14)
    assert short[0, 0] == 49406 and short[0, 2] == 49407 and short[0, 3:].eq(0).all()


@pytest.mark.parametrize("K", [4, 18, 32])
def test_output_shape_and_sequence_length(K):
    enc = make(K)
    assert enc.contexts.shape == (1, K, CLIP.text_width)
    assert enc.clip.positional_embedding.shape == (K + 14, CLIP.text_width)
    assert enc.eot_index == K + 13
    cue = torch.randn(3, CLIP.text_width)
    assert enc(cue, 3).shape == (3, 1, CLIP.embed_dim)
    assert enc(None, 2).shape == (2, 1, CLIP.embed_dim)


def test_without_contexts_equals_open_clip_text_forward():
    enc = make(0)
    with torch.no_grad():
        ours = enc(None, 1)[:, 0]
        theirs = enc.clip(enc.prompt_tokens)  # open_clip's own pooling (argmax = EOT) and projection
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_cue_is_added_to_every_token_before_the_positional_embedding():
    enc = make(4)
    cue = torch.randn(1, CLIP.text_width)
    with torch.no_grad():
        with_cue = enc(cue, 1)
        # shifting every token embedding (table rows and contexts) by the cue must give the same result
        enc.clip.token_embedding.weight += cue
        enc.contexts += cue[:, None]
        shifted = enc(None, 1)
    torch.testing.assert_close(with_cue, shifted, atol=1e-5, rtol=1e-5)


def test_output_reads_eot_and_ignores_padding_after_it():
    enc = TextEncoder(CLIP, num_prompts=4, class_prompt="text", prompt_length=14).eval()
    with torch.no_grad():
        before = enc(None, 1).clone()
        enc.clip.token_embedding.weight[0] += 5.0  # pad id 0 only appears after EOT: causal mask hides it
        assert torch.equal(enc(None, 1), before)
        enc.contexts[0, 1] += 1.0  # contexts come before EOT and must matter
        assert not torch.allclose(enc(None, 1), before)


def test_contexts_learn_through_a_frozen_tower():
    enc = make(4)
    for p in enc.clip.parameters():
        p.requires_grad_(False)
    cue = torch.randn(2, CLIP.text_width, requires_grad=True)
    enc(cue, 2).sum().backward()
    assert enc.contexts.grad is not None and enc.contexts.grad.abs().sum() > 0
    assert cue.grad is not None and cue.grad.abs().sum() > 0


def test_too_long_prompt_is_refused():
    with pytest.raises(ValueError, match="exceeds"):
        TextEncoder(CLIP, num_prompts=70, class_prompt=PROMPT, prompt_length=14)


def test_learnable_contexts_start_trunc_normal_std_1_cut_at_2():
    """Released ocrclip.py: torch's trunc_normal_ with its defaults (std 1, cut at +-2), the scale of CLIP's token
    embeddings; a truncated N(0, 1) on [-2, 2] has std 0.880."""
    enc = make(32)  # 32 x 64 = 2048 values
    values = enc.contexts.detach()
    assert values.abs().max() <= 2.0
    assert values.abs().max() > 1.5  # std 0.02 would stay below 0.05
    assert 0.84 < values.std().item() < 0.92


def test_context_init_std_is_the_released_1_by_default_and_0_02_in_the_tiny_preset():
    """TCMConfig.context_init_std: the released std 1 for every real config; the tiny preset's random text tower
    (token embeddings N(0, 0.02)) gets 0.02, which the learning test needs (tcm/config.py says why)."""
    from tcm.config import DetectorConfig

    assert DetectorConfig().tcm.context_init_std == 1.0
    assert DetectorConfig.tiny().tcm.context_init_std == 0.02
    assert DetectorConfig.tiny(context_init_std=1.0).tcm.context_init_std == 1.0  # an explicit override wins
    enc = TextEncoder(CLIP, num_prompts=32, class_prompt=PROMPT, prompt_length=14, context_init_std=0.02)
    values = enc.contexts.detach()  # (1, 32, 64)
    assert values.abs().max() <= 0.04  # cut at +-2 std
    assert 0.015 < values.std().item() < 0.02
