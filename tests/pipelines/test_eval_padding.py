"""Test-time padding (issue #15 item 1): an image's predictions depend only on the image.

TCM's global parts (the attention-pool mean token, the language prompt generator, the visual prompt
generator's attention, the stretched positional embedding) see every padded pixel, so an image pasted on a
canvas shared with larger batch companions is predicted differently than alone. The released test pipeline
pads each image only to a multiple of 32 (batch 1); validation, `tcm evaluate` and `tcm predict` must agree.
"""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch

from pipelines.augment import encode_eval_batch
from pipelines.config import ExperimentConfig
from pipelines.evaluate import predict_rows
from pipelines.predict import predict_images
from tcm.build import build_codec, build_detector
from tcm.config import DBHeadConfig, DetectorConfig

# box_thresh 0: a random network's maps still decode to boxes, so the comparison is not between empty lists
CFG = DetectorConfig.tiny(head=DBHeadConfig(neck_channels=64, box_thresh=0.0))
LONG, SHORT = 256, 256  # test scale: each image keeps its ratio, resized by its own factor


def _row(name: str, width: int, height: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    cv2.rectangle(image, (8, 8), (width // 2, 24), (255, 255, 255), -1)  # something text-like
    ok, png = cv2.imencode(".png", image)
    assert ok
    return {
        "id": f"synth/test/{name}",
        "image": png.tobytes(),
        "polygons": [[8.0, 8.0, width / 2, 8.0, width / 2, 24.0, 8.0, 24.0]],
        "ignore": [False],
    }


class _Shard:
    """The part of a Ray Data iterator `predict_rows` uses: numpy batches of eval rows."""

    def __init__(self, batch: dict):
        self.batch = batch

    def iter_batches(self, batch_size: int, batch_format: str):
        n = len(self.batch["id"])
        for start in range(0, n, batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.batch.items()}


def _as_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_detector(CFG, pretrained=False).eval()


def _predict(model, rows: list[dict], batch_size: int) -> dict[str, list]:
    cfg = ExperimentConfig.model_validate({"model": {"preset": "tiny"}, "data": {"val_batch_size": batch_size}})
    batch = encode_eval_batch(_as_table(rows), model_cfg=CFG, long_side=LONG, short_side=SHORT)
    preds = predict_rows(model, build_codec(CFG.head), _Shard(batch), cfg, torch.device("cpu"))
    return {p.id: p.dets for p in preds}


def _assert_same(a, b, what: str) -> None:
    assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)} detections"
    for da, db in zip(a, b, strict=True):
        np.testing.assert_allclose(da.points, db.points, atol=1e-3, err_msg=what)
        assert da.score == pytest.approx(db.score, abs=1e-5), what


def test_an_images_predictions_do_not_depend_on_its_batch_companions(model, tmp_path):
    small = _row("small", 96, 64, seed=1)
    companions = [_row("wide", 224, 96, seed=2), _row("tall", 64, 200, seed=3)]
    alone = _predict(model, [small], batch_size=1)[small["id"]]
    assert len(alone) > 0  # the comparisons below are not between empty lists
    together = _predict(model, [small, *companions], batch_size=3)[small["id"]]
    _assert_same(together, alone, "batched with larger companions vs alone")

    # `tcm predict` on the image file gives the same polygons as validation / `tcm evaluate`
    path = tmp_path / "small.png"
    path.write_bytes(small["image"])
    loaded = SimpleNamespace(model=model, detector=CFG, experiment=None)
    predicted = predict_images(loaded, [path], long_side=LONG, short_side=SHORT)[0].detections
    _assert_same(predicted, alone, "tcm predict vs evaluation")


def test_same_size_images_share_a_batch_and_each_matches_its_batch_1_prediction(model):
    """Batching by size keeps the speed of batches where it is free: equal sizes need no padding."""
    rows = [_row(f"img{i}", 96, 64, seed=10 + i) for i in range(3)]
    batched = _predict(model, rows, batch_size=3)
    for r in rows:
        _assert_same(batched[r["id"]], _predict(model, [r], batch_size=1)[r["id"]], r["id"])
