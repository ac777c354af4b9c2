"""ONNX export of CLIP4STR: the two sessions + the Python BPE step between them (OnnxRecognizer) give PyTorch's
predict-and-refine logits (max abs diff <= 1e-4) and identical strings on rendered words, at a batch size other
than the traced one; graph names and the dynamic batch axis; the visual-only and NAR/2-refinement variants."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from tcm.data.synth_words import render_word
from tcm.recognition.config import RecognizerConfig
from tcm.recognition.export import CROSS_FILE, VISUAL_FILE, export_recognizer
from tcm.recognition.model import CLIP4STR
from tcm.recognition.onnx_runtime import OnnxRecognizer
from tcm.recognition.preprocess import preprocess

from .conftest import build_quietly

TOL = 1e-4  # issue 14: max abs diff on the logits
pytestmark = pytest.mark.slow  # each AR export traces 2 x 26 unrolled decoder steps: ~15-35 s on 2 shared cores


def ending_model(cfg: RecognizerConfig) -> CLIP4STR:
    """A seeded random tiny recogniser whose heads favour [E] a little, so that predictions end at different
    lengths (a random model never predicts [E]: the cut at [E] and the refinement's padding would go unexercised).
    The biases were chosen so that on `words()` both branches give a mix of ended and unended strings."""
    model = build_quietly(cfg).eval()
    with torch.no_grad():
        model.visual_decoder.head.bias[model.tokenizer.eos_id] = 0.3
        if model.cross_decoder is not None:
            model.cross_decoder.head.bias[model.tokenizer.eos_id] = 0.5
    return model


def words(cfg: RecognizerConfig, n: int = 6) -> torch.Tensor:
    rng = np.random.default_rng(0)
    crops = [render_word(rng)[0] for _ in range(n)]  # synthetic words as the demo trains on
    return preprocess(crops, cfg)  # (n, 3, H, W)


def assert_same(onnx_rec: OnnxRecognizer, model: CLIP4STR, images: torch.Tensor) -> list[str]:
    """ONNX logits within TOL of PyTorch's fixed-step predict-and-refine (`early_stop=False`, what the graphs
    trace), identical strings and confidences."""
    with torch.inference_mode():
        expected = model(images, early_stop=False)
    got = onnx_rec.logits(images.numpy())
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].shape == tuple(value.shape), key
        diff = float(np.abs(got[key] - value.numpy()).max())
        assert diff <= TOL, f"{key}: max abs diff {diff}"
    texts, confidences = onnx_rec(images)
    want_texts, want_conf = model.tokenizer.decode(expected["logits"])
    assert texts == want_texts
    np.testing.assert_allclose(confidences, want_conf, rtol=1e-4, atol=1e-7)
    return texts


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_cfg) -> tuple[CLIP4STR, OnnxRecognizer, list]:
    model = ending_model(tiny_cfg)
    directory = tmp_path_factory.mktemp("rec_onnx")
    torch.set_num_threads(1)
    written = export_recognizer(model, directory, batch_size=2)  # traced at 2, run at 6 and 4 below
    return model, OnnxRecognizer(directory, threads=1), written


def test_onnx_matches_pytorch_on_rendered_words(exported, tiny_cfg):
    model, onnx_rec, _ = exported
    images = words(tiny_cfg)
    texts = assert_same(onnx_rec, model, images)
    visual_texts = model.tokenizer.decode(torch.from_numpy(onnx_rec.logits(images.numpy())["visual_logits"]))[0]
    for branch in (texts, visual_texts):  # both branches: some strings cut at [E], some not
        lengths = {len(t) for t in branch}
        assert 26 in lengths and min(lengths) < 26, branch
    with torch.inference_mode():  # here no early exit happens (some rows never end): the default forward too
        assert float((model(images)["logits"] - torch.from_numpy(onnx_rec.logits(images.numpy())["logits"])).abs().max()) <= TOL
    # rows that all end: PyTorch's default AR loop stops early there. The visual branch is unaffected (the
    # refinement pads from the first [E]); the cross branch of the default forward runs only as many steps as
    # the visual one took, so its logits are not the fixed-step ones (docs/recognition.md, ONNX export)
    ended = torch.tensor([i for i, t in enumerate(visual_texts) if len(t) < 26])
    assert len(ended) >= 2
    with torch.inference_mode():
        assert model(images[ended], refine_iters=0)["visual_logits"].shape[1] < 26  # the early exit happened
        early = model(images[ended])["visual_logits"]
    assert_same(onnx_rec, model, images[ended])
    got = onnx_rec.logits(images[ended].numpy())["visual_logits"]
    assert float(np.abs(got - early.numpy()).max()) <= TOL


def test_graphs_have_named_io_and_a_dynamic_batch(exported):
    _, _, written = exported
    assert [p.name for p in written] == [VISUAL_FILE, CROSS_FILE, "recognizer.json"]
    visual, cross = (onnx.load(str(p)).graph for p in written[:2])
    assert [i.name for i in visual.input] == ["images"]
    assert [o.name for o in visual.output] == ["memory", "visual_logits", "visual_ids"]
    assert [i.name for i in cross.input] == ["memory", "text_tokens"]
    assert [o.name for o in cross.output] == ["cross_logits"]
    for value in [*visual.input, *visual.output, *cross.input, *cross.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
    # visual_ids (B, S, T) with S = refine_iters + 1 stages; text_tokens (B, S, Lc)
    assert visual.output[2].type.tensor_type.shape.dim[1].dim_value == 2
    assert [d.dim_value for d in cross.input[1].type.tensor_type.shape.dim[1:]] == [2, 16]


def test_bad_input_is_named(exported, tmp_path):
    _, onnx_rec, _ = exported
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 128\)"):
        onnx_rec.logits(np.zeros((2, 3, 32, 100), np.float32))
    with pytest.raises(FileNotFoundError, match="recognizer.json"):
        OnnxRecognizer(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides", [dict(cross_modal=False), dict(decode_ar=False, refine_iters=2)], ids=["visual-only", "nar-refine2"]
)
def test_variants_match_pytorch(overrides, tmp_path):
    cfg = RecognizerConfig.tiny(max_label_length=7, **overrides)  # 8 AR steps: a third of the export time
    model = ending_model(cfg)
    written = export_recognizer(model, tmp_path, batch_size=2)
    assert (tmp_path / CROSS_FILE in written) == cfg.cross_modal
    assert_same(OnnxRecognizer(tmp_path, threads=1), model, words(cfg, n=3))
