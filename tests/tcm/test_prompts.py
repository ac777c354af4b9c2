import pytest
import torch

from tcm.prompts import ContextDecoder, LanguagePromptGenerator, TextContextDecoder, VisualPromptGenerator


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
    assert len(dec.layers) == 3 and all(layer.norm_first for layer in dec.layers)
    assert dec.layers[0].linear1.out_features == 4 * W
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
