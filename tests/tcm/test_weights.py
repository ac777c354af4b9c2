import os
import pickle
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from tcm.backbone.image import ImageEncoder, resize_positional_embedding
from tcm.backbone.text import TextEncoder
from tcm.config import ClipConfig, DetectorConfig
from tcm.weights import init_clip_weights, load_clip_weights, read_clip_state_dict


@pytest.fixture(autouse=True)
def one_thread():
    """Small ops on 2 shared cores run far faster single-threaded (no OpenMP contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = DetectorConfig.tiny().clip
K, PROMPT_LEN = 4, 14


def open_clip_model(cfg: ClipConfig, image_size: int = 224, seed: int = 1) -> CLIP:
    """A random-init open_clip CLIP with the towers `cfg` describes (what RN50.pt / open_clip files hold)."""
    torch.manual_seed(seed)
    vision = CLIPVisionCfg(
        layers=cfg.vision_layers,
        width=cfg.vision_width,
        head_width=cfg.vision_width * 32 // cfg.vision_heads,  # open_clip derives the pool heads from this
        image_size=image_size,
    )
    text = CLIPTextCfg(
        context_length=cfg.text_context_length,
        vocab_size=cfg.text_vocab_size,
        width=cfg.text_width,
        heads=cfg.text_heads,
        layers=cfg.text_layers,
    )
    return CLIP(embed_dim=cfg.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=cfg.quick_gelu).eval()


def towers(cfg: ClipConfig, dense: bool = True) -> tuple[ImageEncoder, TextEncoder]:
    torch.manual_seed(2)  # different from the checkpoint's seed
    return ImageEncoder(cfg, dense=dense), TextEncoder(cfg, K, "text", PROMPT_LEN)


def save_both(model: CLIP, folder: Path) -> tuple[Path, Path]:
    sd_path, ts_path = folder / "open_clip.pt", folder / "RN.pt"
    torch.save(model.state_dict(), sd_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated, still what OpenAI shipped
        torch.jit.script(model).save(str(ts_path))
    return sd_path, ts_path


def assert_loaded_exactly(model: CLIP, image: ImageEncoder, text: TextEncoder) -> None:
    for name, tensor in image.resnet.state_dict().items():
        assert torch.equal(tensor, model.visual.state_dict()[name]), name
    source = model.state_dict()
    for name, tensor in text.clip.state_dict().items():
        expected = source[name][: tensor.shape[0]] if name == "positional_embedding" else source[name]
        assert torch.equal(tensor, expected), name


def test_torchscript_archive_and_state_dict_load_bit_exactly(tmp_path):
    model = open_clip_model(TINY)
    sd_path, ts_path = save_both(model, tmp_path)
    with zipfile.ZipFile(ts_path) as z:
        assert any(n.endswith("/constants.pkl") for n in z.namelist())  # a genuine TorchScript archive
    for path in (sd_path, ts_path):
        image, text = towers(TINY)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing unexpected in either format
            report = load_clip_weights(image, text, str(path))
        assert_loaded_exactly(model, image, text)
        assert "positional_embedding" in report.resized  # 77 -> K + prompt_length
        assert "visual.conv1.weight" in report.loaded and "transformer.resblocks.1.mlp.c_fc.weight" in report.loaded


def test_wrapped_checkpoint_and_baseline_without_text(tmp_path):
    model = open_clip_model(TINY)
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    image = ImageEncoder(TINY, dense=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # attention pool and text keys are expected to go unused here
        report = load_clip_weights(image, None, str(path))
    assert not any(k.startswith("visual.attnpool") for k in report.loaded)
    assert torch.equal(image.resnet.layer4[0].conv2.weight, model.visual.layer4[0].conv2.weight)


def test_attention_pool_grid_is_resized(tmp_path):
    model = open_clip_model(TINY, image_size=288)  # 9 x 9 grid
    path = tmp_path / "clip288.pt"
    torch.save(model.state_dict(), path)
    image, text = towers(TINY)  # 7 x 7 grid
    report = load_clip_weights(image, text, str(path))
    assert "visual.attnpool.positional_embedding" in report.resized
    expected = resize_positional_embedding(model.visual.attnpool.positional_embedding.detach(), 7, 7)
    assert torch.equal(image.resnet.attnpool.positional_embedding.detach(), expected)


def test_mismatched_towers_name_the_keys(tmp_path):
    other = ClipConfig(**{**TINY.__dict__, "vision_width": 16, "text_layers": 1})
    path = tmp_path / "other.pt"
    torch.save(open_clip_model(other).state_dict(), path)
    image, text = towers(TINY)
    with pytest.raises(ValueError) as err:
        load_clip_weights(image, text, str(path))
    message = str(err.value)
    assert "shape: visual.conv1.weight" in message and "missing: transformer.resblocks.1" in message


def test_no_weights_warns_that_results_will_be_poor():
    image, text = towers(TINY)
    with pytest.warns(UserWarning, match="random initialisation"):
        assert init_clip_weights(image, text, None) is None


class Payload:
    """A pickle that runs a shell command when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_payload_really_executes_when_unpickled_naively(tmp_path):
    marker = tmp_path / "naive"
    pickle.loads(pickle.dumps(Payload(marker)))  # the control: the payload is live
    assert marker.exists()


def malicious_checkpoints(folder: Path, marker: Path, root: str) -> tuple[Path, Path]:
    """A state dict and a TorchScript-shaped archive (root/constants.pkl + root/data.pkl) that both run a payload
    when unpickled naively."""
    state_dict_file = folder / f"evil_{root}_state_dict.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1), "x": Payload(marker)}, state_dict_file)
    script_file = folder / f"evil_{root}.pt"
    with zipfile.ZipFile(script_file, "w") as z:
        z.writestr(f"{root}/data.pkl", pickle.dumps(Payload(marker), protocol=2))
        z.writestr(f"{root}/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr(f"{root}/version", "3\n")
    return state_dict_file, script_file


def test_malicious_checkpoints_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    for path in malicious_checkpoints(tmp_path, marker, "RN50"):
        with pytest.raises(ValueError, match="refusing"):
            read_clip_state_dict(str(path))
        assert not marker.exists()


def test_missing_file_says_which():
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        read_clip_state_dict("/nowhere.pt")


@pytest.mark.integration
def test_loads_from_s3(s3_env, tmp_path):
    model = open_clip_model(TINY)
    _, ts_path = save_both(model, tmp_path)
    bucket = s3_env.create_bucket("clip-weights")
    s3_env.client().put_object(Bucket=bucket, Key="openai/RN.pt", Body=ts_path.read_bytes())
    image, text = towers(TINY)
    load_clip_weights(image, text, f"s3://{bucket}/openai/RN.pt")
    assert_loaded_exactly(model, image, text)


@pytest.mark.slow
def test_full_rn50_both_formats_bit_exact(tmp_path):
    rn50 = DetectorConfig().clip
    model = open_clip_model(rn50)
    sd_path, ts_path = save_both(model, tmp_path)
    for path in (sd_path, ts_path):
        image, text = towers(rn50)
        load_clip_weights(image, text, str(path))
        assert_loaded_exactly(model, image, text)
        del image, text


# ------------------------------------------------------------------------ ViT CLIP into the recogniser (CLIP4STR)

from tcm.recognition.build import build_recognizer  # noqa: E402
from tcm.recognition.config import RecognizerConfig  # noqa: E402
from tcm.weights import load_clip_vit_weights  # noqa: E402

OPENAI_INTS = {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}


class OpenAIArchive(torch.nn.Module):
    """What OpenAI's ViT-B-16.pt holds once scripted: every CLIP tensor under its OpenAI name (fp16, as shipped) and
    the `input_resolution`, `context_length`, `vocab_size` entries."""

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        super().__init__()
        for key, tensor in state_dict.items():
            *path, leaf = key.split(".")
            module: torch.nn.Module = self
            for part in path:
                if part not in module._modules:
                    module.add_module(part, torch.nn.Module())
                module = module._modules[part]
            module.register_parameter(leaf, torch.nn.Parameter(tensor.detach().half(), requires_grad=False))
        for key, value in OPENAI_INTS.items():
            self.register_buffer(key, torch.tensor(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def vit_clip(cfg: RecognizerConfig, image_size=None, seed: int = 1) -> CLIP:
    """A random-init open_clip ViT CLIP (QuickGELU, 77 text positions) with the towers `cfg` describes."""
    torch.manual_seed(seed)
    vision = CLIPVisionCfg(
        layers=cfg.vision_layers,
        width=cfg.vision_width,
        head_width=cfg.vision_head_width,
        patch_size=cfg.patch_size,
        image_size=image_size or cfg.image_size,
    )
    text = CLIPTextCfg(
        context_length=77, vocab_size=cfg.text_vocab_size, width=cfg.text_width, heads=cfg.text_heads,
        layers=cfg.text_layers,
    )
    return CLIP(embed_dim=cfg.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()


def save_vit_both(model: CLIP, folder: Path) -> tuple[Path, Path]:
    sd_path, ts_path = folder / "open_clip_vit.pt", folder / "ViT-B-16.pt"
    torch.save(model.state_dict(), sd_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated, still what OpenAI shipped
        torch.jit.script(OpenAIArchive(model.state_dict())).save(str(ts_path))
    return sd_path, ts_path


def assert_vit_loaded_exactly(source: CLIP, recognizer, half: bool) -> None:
    expected = {k: (v.half().float() if half else v) for k, v in source.state_dict().items()}
    for name, tensor in recognizer.image_encoder.visual.state_dict().items():
        assert torch.equal(tensor, expected[f"visual.{name}"]), name
    for name, tensor in recognizer.text_encoder.clip.state_dict().items():
        want = expected[name][:16] if name == "positional_embedding" else expected[name]  # 77 rows sliced, not resized
        assert torch.equal(tensor, want), name


def load_both_formats(cfg: RecognizerConfig, source: CLIP, folder: Path) -> None:
    sd_path, ts_path = save_vit_both(source, folder)
    with zipfile.ZipFile(ts_path) as z:
        assert any(n.endswith("/constants.pkl") for n in z.namelist())  # a genuine TorchScript archive
    for path, half in ((sd_path, False), (ts_path, True)):
        torch.manual_seed(3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing unexpected, no "random initialisation" warning
            recognizer = build_recognizer(replace(cfg, weights=str(path)))
        assert_vit_loaded_exactly(source, recognizer, half)
        del recognizer


def test_vit_torchscript_archive_and_state_dict_load_bit_exactly(tmp_path):
    cfg = RecognizerConfig.tiny(image_size=(64, 64))  # a square grid, as CLIP checkpoints are pretrained
    load_both_formats(cfg, vit_clip(cfg), tmp_path)


def test_vit_grid_is_resized_and_a_visual_only_model_ignores_text(tmp_path):
    cfg = RecognizerConfig.tiny(cross_modal=False)
    source = vit_clip(cfg, image_size=64)  # 8 x 8 grid; the model's is 4 x 16: same row count, other grid
    path = tmp_path / "clip64.pt"
    torch.save(source.state_dict(), path)
    recognizer = build_recognizer(replace(cfg, weights=str(path)))
    report = load_clip_vit_weights(recognizer.image_encoder.visual, None, str(path))  # warns about nothing
    assert report.resized == ["visual.positional_embedding"] and report.unexpected == []
    expected = resize_positional_embedding(source.visual.positional_embedding.detach(), 4, 16)
    assert torch.equal(recognizer.image_encoder.visual.positional_embedding.detach(), expected)


def test_vit_mismatch_names_the_keys(tmp_path):
    other = RecognizerConfig.tiny(text_width=64, vision_layers=1)
    path = tmp_path / "other.pt"
    torch.save(vit_clip(other).state_dict(), path)
    with pytest.raises(ValueError) as err:
        build_recognizer(RecognizerConfig.tiny(weights=str(path)))
    message = str(err.value)
    assert "missing: visual.transformer.resblocks.1" in message and "shape: token_embedding.weight" in message


def test_recognizer_without_weights_warns():
    with pytest.warns(UserWarning, match="random initialisation"):
        build_recognizer(RecognizerConfig.tiny())


def test_malicious_vit_checkpoints_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    for path in malicious_checkpoints(tmp_path, marker, "ViT-B-16"):
        with pytest.raises(ValueError, match="refusing"):
            build_recognizer(RecognizerConfig.tiny(weights=str(path)))
        assert not marker.exists()


@pytest.mark.slow
def test_full_vit_b16_both_formats_bit_exact(tmp_path):
    cfg = RecognizerConfig()
    load_both_formats(cfg, vit_clip(cfg), tmp_path)
