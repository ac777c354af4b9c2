"""Evaluation: batch inference on Ray Data with an actor pool -> codec decode -> ICDAR protocol.

    eval rows (pipelines.augment.eval_dataset: normalised test-size image, id, scale, ground truth)
      -> map_batches(Predictor, compute=ActorPoolStrategy(size=n))   one model copy per actor, decode on the actor
      -> driver: tcm.evaluation.evaluate + threshold_sweep -> metrics, per-image JSON, curve PNG, overlays
      -> MLflow (a run of its own, or the training run during validation)

The helpers `predict_rows` and `score_pairs` are shared with periodic validation inside training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer

from pipelines import registry, tracking
from pipelines.config import ConfigError, DatasetRef, ExperimentConfig, MlflowConfig, load_config
from tcm.types import Detection, Instance

if TYPE_CHECKING:  # torch is imported where used: `tcm --help` loads this module
    import torch

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PredRow:
    """One evaluated image: ground truth and detections in original-image pixels."""

    id: str
    gt: list[Instance]
    dets: list[Detection]


# ------------------------------------------------------------------------------------------------ row codecs


def gt_instances(row: Mapping[str, Any]) -> list[Instance]:
    """Ground truth of an eval row (`gt_polygons` / `gt_ignore` JSON, original pixels; pipelines.augment)."""
    from pipelines.augment import parse_gt

    polygons, ignore = parse_gt(row["gt_polygons"], row["gt_ignore"])
    return [Instance(p, ignore=ig) for p, ig in zip(polygons, ignore, strict=True)]


def dets_to_json(dets: Sequence[Detection]) -> str:
    return json.dumps([{"points": d.points.reshape(-1).round(2).tolist(), "score": round(float(d.score), 5)} for d in dets])


def dets_from_json(text: str) -> list[Detection]:
    return [Detection(np.asarray(d["points"], dtype=np.float64).reshape(-1, 2), float(d["score"])) for d in json.loads(text)]


def _scales(batch: Mapping[str, Any], B: int) -> list[tuple[float, float]]:
    scale = np.asarray(batch["scale"], dtype=np.float64).reshape(B, -1)  # (B, 2): sx, sy
    return [(float(s[0]), float(s[-1])) for s in scale]


def decode_batch(
    model: torch.nn.Module,
    codec: Any,
    images: torch.Tensor,
    scales: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[int, int]] | None = None,
) -> list[list[Detection]]:
    """Run the network on (B, 3, H, W) normalised images and decode each image's maps to polygons.

    `sizes` (width, height) of the original images clip the polygons to them: the /32 padding beyond the
    image scales to coordinates past its edge."""
    import torch

    with torch.inference_mode():
        outputs = model(images)
    B = images.shape[0]
    return [
        decode_maps(codec, {k: v[i].float().cpu().numpy() for k, v in outputs.items()}, scales[i],  # one image
                    None if sizes is None else sizes[i])  # fmt: skip
        for i in range(B)
    ]


def decode_maps(
    codec: Any, maps: Mapping[str, np.ndarray], scale: tuple[float, float], size: tuple[int, int] | None
) -> list[Detection]:
    """One image's output maps (no batch axis) -> its polygons in original pixels, clipped to `size` (width,
    height) when given: the /32 padding beyond the image scales to coordinates past its edge. Numpy only (the
    ONNX Runtime spotter decodes with it too)."""
    dets = codec.decode(dict(maps), scale=scale)
    if size is not None:
        W, H = size
        dets = [Detection(np.clip(d.points, 0, [W, H]), d.score) for d in dets]  # (P, 2) clipped
    return dets


def _sizes(batch: Mapping[str, Any], sel: Sequence[int]) -> list[tuple[int, int]] | None:
    if "width" not in batch or "height" not in batch:
        return None
    return [(int(batch["width"][i]), int(batch["height"][i])) for i in sel]


def size_groups(images: Sequence[np.ndarray]) -> list[list[int]]:
    """Indices of `images` grouped by shape, in first-seen order. Eval images are padded only to multiples of
    32 (pipelines.augment.eval_row), so one forward pass takes only images of one size: a prediction never
    depends on the padding a larger batch companion would force on it."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(np.shape(image)), []).append(i)
    return list(groups.values())


def predict_eval_batch(
    model: torch.nn.Module, codec: Any, batch: Mapping[str, Any], sel: Sequence[int], device: torch.device
) -> list[list[Detection]]:
    """Detections of the rows `sel` of a numpy batch of eval rows, one forward pass per image size."""
    import torch

    images = [np.asarray(batch["image"][i], dtype=np.float32) for i in sel]  # each (3, H_i, W_i) normalised
    scales = _scales({"scale": np.asarray(batch["scale"])[list(sel)]}, len(sel))
    sizes = _sizes(batch, sel)
    dets: list[list[Detection]] = [[] for _ in sel]
    for group in size_groups(images):
        x = torch.from_numpy(np.stack([images[j] for j in group])).to(device)  # (G, 3, H, W)
        out = decode_batch(
            model, codec, x, [scales[j] for j in group], None if sizes is None else [sizes[j] for j in group]
        )
        for j, d in zip(group, out, strict=True):
            dets[j] = d
    return dets


def predict_rows(
    model: torch.nn.Module,
    codec: Any,
    shard: Any,
    cfg: ExperimentConfig,
    device: torch.device,
    keep: Callable[[str], bool] = lambda _id: True,
) -> list[PredRow]:
    """Predict the rows of a Ray Data iterator/dataset selected by `keep(id)` (a validation slice)."""

    was_training = model.training
    model.eval()
    rows: list[PredRow] = []
    try:
        for batch in shard.iter_batches(batch_size=cfg.data.val_batch_size, batch_format="numpy"):
            ids = [str(i) for i in batch["id"]]
            sel = [i for i, rid in enumerate(ids) if keep(rid)]
            if not sel:
                continue
            dets = predict_eval_batch(model, codec, batch, sel, device)
            for j, i in enumerate(sel):
                gt = gt_instances({"gt_polygons": batch["gt_polygons"][i], "gt_ignore": batch["gt_ignore"][i]})
                rows.append(PredRow(ids[i], gt, dets[j]))
    finally:
        model.train(was_training)
    return rows


# ------------------------------------------------------------------------------------------------ scoring


def score_pairs(
    rows: Sequence[PredRow],
    protocol: str,
    out_dir: Path | None = None,
    *,
    num_overlays: int = 0,
    images: Callable[[Sequence[str]], Mapping[str, np.ndarray]] | None = None,
) -> dict[str, float]:
    """ICDAR scores over the rows, the threshold sweep, and (into out_dir) per-image JSON, curve, overlays.

    `images(ids)` returns original images (H, W, 3 uint8 BGR) for overlays; without it no overlays are drawn.
    """
    from tcm.evaluation import evaluate, threshold_sweep

    rows = sorted(rows, key=lambda r: r.id)
    pairs = [(r.gt, r.dets) for r in rows]
    result = evaluate(pairs, protocol=protocol)
    sweep = threshold_sweep(pairs, protocol=protocol)
    metrics = {
        "hmean": result.hmean,
        "precision": result.precision,
        "recall": result.recall,
        "images": float(len(rows)),
        "sweep_best_hmean": sweep.best_hmean,  # optimistic: the threshold is picked on this very set
        "sweep_best_threshold": sweep.best_threshold,
    }
    if out_dir is None:
        return metrics
    out_dir.mkdir(parents=True, exist_ok=True)
    per_image = [
        {"id": r.id, "precision": res.precision, "recall": res.recall, "hmean": res.hmean, "detections": len(r.dets)}
        for r, res in zip(rows, result.per_image, strict=True)
    ]
    (out_dir / "metrics.json").write_text(json.dumps({**metrics, "sweep_note": sweep.note}, indent=2))
    (out_dir / "per_image.json").write_text(json.dumps(per_image, indent=2))
    (out_dir / "threshold_sweep.json").write_text(
        json.dumps([dataclasses.asdict(r) for r in sweep.rows], indent=2, default=str)
    )
    _plot_curve(sweep, out_dir / "threshold_curve.png")
    if num_overlays and images is not None and rows:
        chosen = [r.id for r in rows[:num_overlays]]
        _draw_overlays(rows, result.per_image, images(chosen), out_dir / "overlays")
    return metrics


def _plot_curve(sweep: Any, path: Path) -> None:
    from tcm.visualize import plot_threshold_curve

    plot_threshold_curve(sweep, path)


def _draw_overlays(rows: Sequence[PredRow], results: Sequence[Any], images: Mapping[str, np.ndarray], out: Path) -> None:
    import cv2

    from tcm.visualize import draw_overlay

    out.mkdir(parents=True, exist_ok=True)
    for row, res in zip(rows, results, strict=True):
        if row.id not in images:
            continue
        canvas = draw_overlay(images[row.id], row.gt, row.dets, res)
        cv2.imwrite(str(out / (row.id.replace("/", "__") + ".png")), canvas)


def overlay_source(refs: Sequence[DatasetRef]) -> Callable[[Sequence[str]], dict[str, np.ndarray]]:
    """`images(ids)` reading the original encoded images of those ids straight from the ingested shards."""

    def images(ids: Sequence[str]) -> dict[str, np.ndarray]:
        import pyarrow.compute as pc
        import pyarrow.dataset as pads

        from pipelines import ingest, storage
        from tcm.data.transforms import decode_image

        wanted = set(ids)
        found: dict[str, np.ndarray] = {}
        for ref in refs:
            uris = ingest.shard_uris(ref.uri, ref.split)
            if not uris:
                continue
            loc = storage.resolve(uris[0])
            paths = [storage.resolve(u).path for u in uris]
            table = pads.dataset(paths, filesystem=loc.fs, format="parquet").to_table(
                columns=["id", "image"], filter=pc.field("id").isin(sorted(wanted))
            )
            for rid, data in zip(table.column("id").to_pylist(), table.column("image").to_pylist(), strict=True):
                found[rid] = decode_image(data)
        return found

    return images


# ------------------------------------------------------------------------------------------------ batch inference


class Predictor:
    """Ray Data actor: loads the model once, predicts and decodes batches of eval rows."""

    def __init__(self, model_uri: str, tracking_uri: str | None, use_gpu: bool):
        import torch

        from tcm.build import build_codec

        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        loaded = registry.load_model(model_uri, tracking_uri)
        self.model = loaded.model.to(self.device).eval()
        self.codec = build_codec(loaded.detector.head)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:

        ids = [str(i) for i in batch["id"]]
        dets = predict_eval_batch(self.model, self.codec, batch, range(len(ids)), self.device)
        return {
            "id": np.asarray(ids, dtype=object),
            "gt_polygons": np.asarray(batch["gt_polygons"], dtype=object),
            "gt_ignore": np.asarray(batch["gt_ignore"], dtype=object),
            "detections": np.asarray([dets_to_json(d) for d in dets], dtype=object),
        }


def predict_dataset(ds: Any, model_uri: str, tracking_uri: str | None, cfg: ExperimentConfig) -> list[PredRow]:
    """Batch inference over a Ray Dataset of eval rows with an actor pool (`eval.num_actors` model copies)."""
    import ray.data

    preds = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"model_uri": model_uri, "tracking_uri": tracking_uri, "use_gpu": cfg.eval.use_gpu},
        batch_size=cfg.eval.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.eval.num_actors),
        num_gpus=1 if cfg.eval.use_gpu else 0,
    )
    return [PredRow(r["id"], gt_instances(r), dets_from_json(r["detections"])) for r in preds.iter_rows()]


@dataclasses.dataclass
class EvalOutcome:
    metrics: dict[str, float]
    rows: list[PredRow]
    out_dir: str | None
    mlflow_run_id: str | None


def config_for_model(loaded: registry.LoadedModel, base: ExperimentConfig | None) -> ExperimentConfig:
    """The config to evaluate with: the one given, else the training run's own (its test scale and protocol)."""
    if base is not None:
        return base
    if loaded.experiment:
        return ExperimentConfig.model_validate(loaded.experiment)
    from pipelines.config import ModelConfig

    return ExperimentConfig(model=ModelConfig.from_detector(loaded.detector))


def run_evaluation(
    model_uri: str,
    refs: Sequence[DatasetRef],
    cfg: ExperimentConfig | None = None,
    *,
    tracking_uri: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    out_dir: Path | None = None,
    num_overlays: int = 4,
    log_to_mlflow: bool = True,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    rec: str | None = None,
) -> EvalOutcome:
    """Evaluate `model_uri` (models:/…, runs:/… or a checkpoint folder) on ingested datasets `refs`.

    Test scale, protocol and actor pool come from `cfg`, else from the config the model was trained with.
    With `rec` (a recogniser), `model_uri` must be a detector: the pair is also scored end to end, by word
    spotting and by word accuracy on the GT crops (pipelines.evaluate_spot), in the same run."""
    from pipelines.spot import check_pair
    from pipelines.tasks import task_for
    from pipelines.train import eval_datasets, init_ray

    tracking_uri = registry.absolute_tracking_uri(
        tracking_uri or (cfg.mlflow.resolved_tracking_uri() if cfg else MlflowConfig().resolved_tracking_uri())
    )
    # a bad URI or a swapped pair fails here, before Ray or any actor starts
    polygons = check_pair(model_uri, rec, tracking_uri, det_flag="--model") if rec else False
    init_ray()
    loaded = registry.load_model(model_uri, tracking_uri)
    cfg = config_for_model(loaded, cfg)
    if overrides:
        cfg = cfg.with_overrides(overrides, "--set")
    task = task_for(loaded.detector)  # detection: predict_dataset + score_pairs below; recognition: words
    rows = task.predict_dataset(eval_datasets(cfg, refs, loaded.detector), model_uri, tracking_uri, cfg)
    with tempfile.TemporaryDirectory(prefix="tcm-eval-") as tmp:
        folder = out_dir or Path(tmp)
        metrics = task.score(rows, cfg, folder, num_samples=num_overlays, images=overlay_source(refs))
        if rec:
            from pipelines.evaluate_spot import evaluate_pair

            spot_metrics, _ = evaluate_pair(model_uri, rec, refs, cfg, tracking_uri=tracking_uri, polygons=polygons,
                                            folder=folder, num_overlays=num_overlays, images=overlay_source(refs))  # fmt: skip
            metrics = {**metrics, **spot_metrics}
        run_id = None
        if log_to_mlflow:
            run_id = _log_evaluation(tracking_uri, cfg, model_uri, refs, metrics, folder, run_name, parent_run_id, rec)
    return EvalOutcome({f"test/{k}": v for k, v in metrics.items()}, rows, str(out_dir) if out_dir else None, run_id)


def _log_evaluation(
    tracking_uri: str,
    cfg: ExperimentConfig,
    model_uri: str,
    refs: Sequence[DatasetRef],
    metrics: Mapping[str, float],
    folder: Path,
    run_name: str | None,
    parent_run_id: str | None,
    rec: str | None = None,
) -> str:
    """One MLflow run per (model [+ recogniser], data): evaluating the same again updates that run."""
    data = ",".join(f"{r.uri}#{r.split}" for r in refs)
    models = f"{model_uri}+{rec}" if rec else model_uri
    tags = {registry.MODEL_URI_TAG: model_uri, "tcm.kind": "evaluation"}
    if rec:
        tags |= {"tcm.rec_uri": rec, **registry.pair_run_tags(tracking_uri, model_uri, rec)}
    experiment_id = registry.ensure_experiment(
        tracking_uri, cfg.mlflow.experiment, registry.store_artifact_location(cfg.mlflow, tracking_uri),
        configured=cfg.mlflow.artifact_location is not None,
    )
    run_id, _ = registry.get_or_create_run(
        tracking_uri,
        experiment_id,
        registry.run_key(f"evaluate:{models}", data),
        run_name or f"evaluate {models}",
        parent_run_id=parent_run_id,
        tags=tags,
    )
    tracking.log_datasets(tracking_uri, run_id, refs)
    logger = registry.RunLogger(tracking_uri, run_id)
    logger.params({"model_uri": model_uri, "data": data, "protocol": cfg.eval.protocol} | ({"rec_uri": rec} if rec else {}))
    logger.metrics({f"test/{k}": v for k, v in metrics.items()}, step=0)
    logger.artifacts(folder, "evaluation")
    if rec and registry.PAIR_DETECTOR_TAG in tags and registry.PAIR_RECOGNIZER_TAG in tags:
        registry.tag_pair(tracking_uri, model_uri, rec)  # both registered: the versions record their partner
    registry.finish_run(tracking_uri, run_id)
    return run_id


def evaluate_command(
    model: str = typer.Option(
        ..., "--model", help="models:/name@alias, runs:/<id>/model, or a checkpoint folder (path, file:// or s3://)."
    ),
    data: list[str] = typer.Option(..., "--data", help="Ingested dataset folder or s3:// prefix (repeatable)."),
    rec: str = typer.Option(
        None, "--rec", help="A recogniser to pair with the --model detector: also log end-to-end and word-spotting "
        "hmean (the IC15 E2E protocols, as `tcm score`) and word accuracy on the ground-truth crops, with spot overlays.",
    ),
    split: str = typer.Option("test", "--split", help="Split of the ingested data to evaluate."),
    config: Path = typer.Option(
        None, "--config", help="Experiment YAML for test scale, protocol and MLflow (default: the model's own)."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set eval.num_actors=2 (repeatable)."),
    tracking_uri: str = typer.Option(
        None, "--tracking-uri", help="MLflow tracking URI (default: the config's, $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)."
    ),
    out: Path = typer.Option(None, "--out", help="Folder for metrics.json, per_image.json, the curve and overlays."),
    overlays: int = typer.Option(4, "--overlays", min=0, help="Images to draw GT / matched / missed / false-positive overlays for."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not record the evaluation as an MLflow run."),
) -> None:
    """Evaluate a model on ingested data with the ICDAR protocol (Ray Data batch inference on an actor pool);
    with --rec, a detector + recogniser pair end to end as well."""
    from pipelines.checkpoint import CheckpointError
    from pipelines.storage import StorageError

    try:
        cfg = load_config(config, set_) if config else None
        outcome = run_evaluation(
            model,
            [DatasetRef(uri=u, split=split) for u in data],
            cfg,
            tracking_uri=tracking_uri,
            overrides=None if config else _parse_sets(set_),
            out_dir=out,
            num_overlays=overlays,
            log_to_mlflow=not no_mlflow,
            rec=rec,
        )
    except (ConfigError, CheckpointError, StorageError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({**outcome.metrics, "mlflow_run_id": outcome.mlflow_run_id, "out": outcome.out_dir}, indent=2))


def _parse_sets(items: Iterable[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key.sub=value")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out
