"""`tcm synth` -> `tcm ingest` gives back exactly the polygons written, for every format."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.ingest import ingest, shard_uris
from tcm.data.formats import FORMATS
from tcm.data.synth import write_dataset

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.mark.parametrize("fmt", FORMATS)
def test_synth_then_ingest_round_trip(fmt, tmp_path):
    written = write_dataset(fmt, tmp_path / "raw", n=3, seed=7, split="train", height=160, width=224)
    manifest = ingest(fmt, str(tmp_path / "raw" / "train"), str(tmp_path / "dst"), "train", progress=lambda *_: None)
    assert manifest["quarantined"] == [] and manifest["rows"] == 3
    rows = {r["id"]: r for u in shard_uris(str(tmp_path / "dst"), "train") for r in pq.read_table(u).to_pylist()}
    fmt_obj = __import__("tcm.data.formats", fromlist=["get_format"]).get_format(fmt)
    for image_name, instances in written:
        row = rows[f"{fmt}/train/{fmt_obj.image_key(image_name)}"]
        assert (row["width"], row["height"]) == (224, 160)
        assert len(row["polygons"]) == len(instances) > 0
        for flat, ignore, text, inst in zip(row["polygons"], row["ignore"], row["texts"], instances, strict=True):
            got = np.asarray(flat).reshape(-1, 2)  # x0,y0,x1,y1,... -> (P, 2)
            tol = 1e-6 if fmt == "td500" else 0.0
            np.testing.assert_allclose(got, inst.points, atol=tol, rtol=0)
            assert ignore == inst.ignore and text == inst.text


def test_cli_synth_writes_and_says_so(tmp_path):
    result = CliRunner().invoke(app, ["synth", "--format", "totaltext", "--out", str(tmp_path), "--n", "2", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 images" in result.output
    assert len(list((tmp_path / "train" / "images").iterdir())) == 2
    bad = CliRunner().invoke(app, ["synth", "--format", "nope", "--out", str(tmp_path), "--n", "1"])
    assert bad.exit_code == 1 and "nope" in bad.output
