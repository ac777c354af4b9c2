"""`tcm spot --runtime onnxruntime`: the `tcm export` folders of a tiny detector + recogniser give the PyTorch
runtime's spots (same integer corners, same texts, scores within float tolerance; PyTorch with all decoding steps,
`--fixed-steps`, as the graphs run them) with no torch in the process;
what is not an export (a checkpoint, a missing file, the pair swapped) is refused by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.spot_onnx import record_differences

REPO = Path(__file__).resolve().parents[2]
SIDE = 128  # the synthetic images' size and the checkpoints' validation scale: one 128 x 128 forward each
DATA = {"val_long_side": SIDE, "val_short_side": SIDE}  # the detector checkpoint's data section -> the sidecar

# in a fresh interpreter, what `tcm spot --runtime onnxruntime` does besides Ray (the CLI module, the driver's
# check, the local loop, the output files and overlays): its spots as JSON, and whichever torch / open_clip
# modules got imported
ONNX_LOOP = """
import json, sys
from pathlib import Path
import pipelines.cli
from pipelines.spot import Lexicons, SpotSettings, check_pair, run_report, spot_images_local, write_spots
settings = SpotSettings(runtime="onnxruntime", onnx_threads=1)
polygons = check_pair(sys.argv[1], sys.argv[2], None, settings.runtime)
paths = sorted(Path(sys.argv[3]).iterdir())
results = spot_images_local(sys.argv[1], sys.argv[2], paths, settings)
report = run_report(results, settings, Lexicons())
write_spots(results, Path(sys.argv[4]), polygons=polygons, report=report, read_image=lambda n: (Path(sys.argv[3]) / n).read_bytes())
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip"))
print(json.dumps({"records": [r.record() for r in results], "errors": [r.error for r in results], "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Seeded tiny checkpoints (the recogniser with 5 decoding steps: a fifth of its export time), both exported
    with `tcm export`, 5 synthetic images and one undecodable file, and the PyTorch runtime's local loop on them."""
    import torch
    import yaml

    from pipelines.checkpoint import save_checkpoint
    from pipelines.config import load_config
    from pipelines.spot import SpotSettings, spot_images_local
    from tcm.build import build_detector
    from tcm.data.synth import write_dataset
    from tcm.recognition.build import build_recognizer

    root = tmp_path_factory.mktemp("spot-onnx")
    det_yaml = REPO / "jobs" / "configs" / "tiny_cpu.yaml"
    config = yaml.safe_load((REPO / "jobs" / "configs" / "clip4str_tiny_cpu.yaml").read_text())
    config["model"]["recognizer"]["max_label_length"] = 4
    rec_yaml = root / "rec.yaml"
    rec_yaml.write_text(yaml.safe_dump(config))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # both runtimes on one thread: small ops on 2 shared cores
    try:
        torch.manual_seed(0)
        det_cfg, rec_cfg = load_config(det_yaml).detector(), load_config(rec_yaml).tcm_config()
        save_checkpoint(root / "det", build_detector(det_cfg, pretrained=False), det_cfg, experiment={"data": DATA})
        save_checkpoint(root / "rec", build_recognizer(rec_cfg, pretrained=False), rec_cfg)
        for yaml_path, name, out in ((det_yaml, "det", root / "det_onnx"), (rec_yaml, "rec", root / "rec_onnx")):
            args = ["export", "--config", str(yaml_path), "--weights", str(root / name), "--out", str(out)]
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, result.output
        write_dataset("icdar2015", root / "data", 5, seed=3, split="test", height=SIDE, width=SIDE)
        images = root / "data" / "test" / "images"
        (images / "img_9.jpg").write_bytes(b"\xff\xd8 truncated jpeg")  # skipped by both runtimes alike
        # all decoding steps, as the graphs (with early stop a word the visual branch ended early can read otherwise)
        settings = SpotSettings(rec_early_stop=False)
        torch_spots = spot_images_local(str(root / "det"), str(root / "rec"), sorted(images.iterdir()), settings)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "images": images, "torch": torch_spots}


def run_onnx_loop(root: Path, images: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", ONNX_LOOP, str(root / "det_onnx"), str(root / "rec_onnx"), str(images), str(root / "local")],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # exports a tiny detector and recogniser (~15-30 s on 2 shared cores), then spots twice
def test_onnxruntime_spots_equal_torch_without_importing_torch(exported):
    got = run_onnx_loop(exported["root"], exported["images"])
    assert got["heavy"] == []  # neither torch nor open_clip was imported by the whole ONNX spot
    assert (exported["root"] / "local" / "overlays" / "img_1.png").is_file()
    expected = [r.record() for r in exported["torch"]]
    assert sum(len(r["spots"]) for r in expected) > 0  # the comparison covers crops and readings
    assert any(s["text"] for r in expected for s in r["spots"])
    assert [e is None for e in got["errors"]] == [r.error is None for r in exported["torch"]] == [True] * 5 + [False]
    assert got["errors"][-1].startswith("cannot decode image")  # img_9, skipped by both runtimes
    assert record_differences(got["records"], expected) == []


@pytest.mark.slow  # the module's exports, and one Ray run (detector and recogniser actors on ONNX Runtime)
def test_cli_on_ray_with_onnxruntime_writes_the_same_spots(exported, ray_local):
    root, out = exported["root"], exported["root"] / "out"
    args = ["spot", "--runtime", "onnxruntime", "--det", str(root / "det_onnx"), "--rec", str(root / "rec_onnx"),
            "--images", str(exported["images"]), "--out", str(out), "--no-overlays"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (out / "spots.jsonl").read_text().splitlines()]
    assert record_differences(lines, [r.record() for r in exported["torch"] if r.error is None]) == []
    assert json.loads((out / "report.json").read_text())["settings"]["runtime"] == "onnxruntime"


def spot_cli(det: Path | str, rec: Path | str, tmp_path: Path, runtime: str = "onnxruntime"):
    (tmp_path / "images").mkdir(exist_ok=True)
    args = ["spot", "--runtime", runtime, "--det", str(det), "--rec", str(rec), "--images", str(tmp_path / "images"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    return CliRunner().invoke(app, args)


@pytest.fixture
def fake_exports(tmp_path):
    """Export folders with the files `tcm spot` checks (graph contents are never read before the checks)."""
    from pipelines.config import model_config_to_dict
    from tcm.config import DetectorConfig
    from tcm.recognition.config import RecognizerConfig
    from tcm.recognition.onnx_runtime import config_to_json

    det, rec, ckpt = tmp_path / "det", tmp_path / "rec", tmp_path / "ckpt"
    for folder in (det, rec, ckpt):
        folder.mkdir()
    (det / "detector.onnx").write_bytes(b"graph")
    (det / "detector.json").write_text(json.dumps({"model": model_config_to_dict(DetectorConfig.tiny()), "outputs": ["prob_logits"]}))
    (rec / "visual.onnx").write_bytes(b"graph")
    (rec / "cross.onnx").write_bytes(b"graph")
    (rec / "recognizer.json").write_text(config_to_json(RecognizerConfig.tiny()))
    (ckpt / "model.pt").write_bytes(b"weights")
    return det, rec, ckpt


def test_a_checkpoint_with_onnxruntime_is_refused_before_anything_runs(fake_exports, tmp_path):
    det, rec, ckpt = fake_exports
    for args in ((ckpt, rec), (det, ckpt), (tmp_path / "weights.pt", rec)):
        result = spot_cli(*args, tmp_path)
        assert result.exit_code == 1, result.output
        assert "a PyTorch checkpoint; --runtime onnxruntime reads what `tcm export` writes" in result.output
    result = spot_cli("models:/tcm-detector@champion", rec, tmp_path)
    assert result.exit_code == 1 and "not a URI" in result.output
    assert not (tmp_path / "out").exists()
    result = spot_cli(det, rec, tmp_path, runtime="tensorrt")
    assert result.exit_code == 2 and "expected torch or onnxruntime" in result.output


@pytest.mark.parametrize(
    ("folder", "name", "flag"),
    [("det", "detector.json", "--det"), ("det", "detector.onnx", "--det"), ("rec", "recognizer.json", "--rec"),
     ("rec", "cross.onnx", "--rec"), ("rec", "visual.onnx", "--rec")],  # fmt: skip
)
def test_a_missing_export_file_is_named(fake_exports, tmp_path, folder, name, flag):
    from pipelines.spot_onnx import check_pair

    det, rec, _ = fake_exports
    missing = (det if folder == "det" else rec) / name
    missing.unlink()
    with pytest.raises(ValueError) as err:
        check_pair(str(det), str(rec))
    assert str(err.value).startswith(f"{flag} ") and f"{missing} is missing" in str(err.value)


def test_swapped_exports_are_named(fake_exports):
    from pipelines.spot_onnx import check_pair

    det, rec, _ = fake_exports
    with pytest.raises(ValueError, match="a recogniser export"):
        check_pair(str(rec), str(det))
    with pytest.raises(ValueError, match="a detector export, not a recogniser"):
        check_pair(str(det / "detector.onnx"), str(det))


def test_record_differences_sees_corners_texts_and_scores():
    spot = {"polygon": [[0.0, 0.0], [10.4, 0.0], [10.4, 5.0], [0.0, 5.0]], "score": 0.9, "text": "ab", "confidence": 0.5}
    base = [{"image": "a.jpg", "spots": [spot]}]
    assert record_differences(base, base) == []
    near = [{"image": "a.jpg", "spots": [{**spot, "polygon": [[0.0, 0.0], [10.49, 0.0], [10.4, 5.0], [0.0, 5.0]],
                                          "score": 0.9004}]}]  # fmt: skip
    assert record_differences(near, base) == []  # same integer corners, score within 1e-3
    moved = [{"image": "a.jpg", "spots": [{**spot, "polygon": [[0.0, 0.0], [10.6, 0.0], [10.4, 5.0], [0.0, 5.0]]}]}]
    assert record_differences(moved, base) == ["a.jpg spot 0: corners " + str(moved[0]["spots"][0]["polygon"]) + " vs " + str(spot["polygon"])]
    assert record_differences([{"image": "a.jpg", "spots": [{**spot, "text": "aB"}]}], base) == ["a.jpg spot 0: text 'aB' vs 'ab'"]
    assert len(record_differences([{"image": "a.jpg", "spots": [{**spot, "confidence": 0.6}]}], base)) == 1
    assert record_differences([{"image": "a.jpg", "spots": []}], base) == ["a.jpg: 0 spots vs 1"]
