import pytest
import torch

from tcm.prompts import (
    Attention,
    ContextDecoder,
    LanguagePromptGenerator,
    TextContextDecoder,
    VisualPromptGenerator,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Small ops on 2 shared cores run far faster single-threaded (no OpenMP contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


E, W, D = 32, 16, 24


def test_language_prompt_generator_maps_global_vector_to_token_width():
    lpg = LanguagePromptGenerator(E, D)
    kinds = [type(m).__name__ for m in lpg.net]
    assert kinds == ["LayerNorm", "Linear", "ReLU", "LayerNorm", "Linear"]
    assert lpg(torch.randn(3, E)).shape == (3, D)


def test_context_decoder_is_pre_ln_and_reads_its_memory():
    torch.manual_seed(0)
    dec = ContextDecoder(E, W, heads=2, layers=3, dropout=0.1).eval()
    assert len(dec.layers) == 3
    assert dec.layers[0].mlp[0].out_features == 4 * W
    q, mem = torch.randn(2, 7, E), torch.randn(2, 5, E)
    out = dec(q, mem)
    assert out.shape == (2, 7, E)
    assert not torch.allclose(dec(q, mem + torch.randn_like(mem)), out)  # cross-attention uses the memory
    assert dec(q, torch.randn(2, 1, E)).shape == (2, 7, E)  # any memory length


def test_visual_prompt_generator_is_a_gamma_scaled_residual():
    torch.manual_seed(0)
    vpg = VisualPromptGenerator(E, W, 2, 1, 0.0, gamma_init=1e-3).eval()
    assert vpg.gamma.shape == ()
    pixels, text = torch.randn(2, E, 3, 4), torch.randn(2, 1, E)
    out = vpg(pixels, text)
    assert out.shape == pixels.shape
    delta = out - pixels
    assert 0 < delta.abs().max() < 0.1  # starts near identity
    with torch.no_grad():
        vpg.gamma.fill_(2e-3)
    torch.testing.assert_close(vpg(pixels, text) - pixels, 2 * delta, atol=1e-6, rtol=1e-4)
    with torch.no_grad():
        vpg.gamma.zero_()
    assert torch.equal(vpg(pixels, text), pixels)


def test_text_context_decoder_attends_to_global_and_pixels():
    torch.manual_seed(0)
    ctx = TextContextDecoder(E, W, 2, 1, 0.0, gamma_init=1e-3).eval()
    assert ctx.gamma.shape == (E,) and torch.allclose(ctx.gamma, torch.full((E,), 1e-3))
    text, g, pixels = torch.randn(2, 1, E), torch.randn(2, E), torch.randn(2, E, 3, 3)
    out = ctx(text, g, pixels)
    assert out.shape == text.shape
    delta = out - text  # gamma (.) decoder output
    assert not torch.allclose(ctx(text, torch.randn_like(g), pixels) - text, delta)  # the global token is memory
    assert not torch.allclose(ctx(text, g, torch.randn_like(pixels)) - text, delta)


# ------------------------------------------------------------------ released decoder layer (issue #15 item 4)


def test_decoder_attention_has_no_qkv_bias_and_nothing_but_nn_linear_projections():
    dec = ContextDecoder(E, W, heads=2, layers=2, dropout=0.1)
    attentions = [m for m in dec.modules() if isinstance(m, Attention)]
    assert len(attentions) == 4  # self + cross per layer
    for a in attentions:
        assert a.q_proj.bias is None and a.k_proj.bias is None and a.v_proj.bias is None
        assert a.proj.bias is not None  # the output projection keeps its bias (released)
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in dec.modules())


def test_one_memory_token_is_never_dropped_whole_in_training():
    """With one memory token the softmax is 1: dropout on the attention weights (nn.MultiheadAttention's) would
    zero a query's whole cross-attention output with probability p. Released: dropout only after the output
    projection, element by element."""
    torch.manual_seed(0)
    attn = Attention(W, heads=2, dropout=0.1).train()
    q, mem = torch.randn(4, 50, W), torch.randn(4, 1, W)
    rows = torch.cat([attn(q, mem).reshape(-1, W) for _ in range(20)])  # (4000, W)
    whole_rows_dropped = (rows == 0).all(dim=1).float().mean().item()
    assert whole_rows_dropped == 0.0  # attention-weight dropout: ~0.1
    assert 0.05 < (rows == 0).float().mean().item() < 0.15  # the output dropout still acts, element-wise


def test_decoders_and_language_prompt_generator_start_trunc_normal_002():
    torch.manual_seed(0)
    E_, W_ = 256, 64  # wide enough for the weight statistics to be tight
    for module in (ContextDecoder(E_, W_, heads=4, layers=1, dropout=0.1), LanguagePromptGenerator(E_, 128)):
        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        for lin in linears:
            assert 0.017 < lin.weight.std().item() < 0.023, lin  # default nn.Linear: U(+-1/sqrt(fan_in)) = 0.036
            assert lin.bias is None or torch.count_nonzero(lin.bias) == 0
