"""Experiment configuration: YAML validated by pydantic, unknown keys rejected by name.

One `ExperimentConfig` drives `tcm train`, `tcm tune`, `tcm evaluate` and `tcm demo`. The model part nests the
frozen dataclasses of `tcm.config` (pydantic validates them field by field, unknown keys included), so a field
added there is configurable here without a second copy. Experiment YAMLs are flat: they hold only what differs
from the defaults below, and `model.preset: tiny` starts the model from `DetectorConfig.tiny()`.

    cfg = load_config("jobs/configs/ic15_db.yaml", ["optim.lr=3e-4", "train.epochs=10"])

Every problem of a file (unknown key, wrong type, bad value) is reported in ONE `ConfigError` that names the
file, the line and the dotted key, before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from pipelines.storage import redact_uris
from tcm.config import ClipConfig, DBHeadConfig, DetectorConfig, FCEHeadConfig, PANHeadConfig, TCMConfig
from tcm.data.transforms import AugmentConfig
from tcm.data.word_augment import WordAugmentConfig
from tcm.recognition.config import RecognizerConfig


class ConfigError(ValueError):
    """A configuration cannot be used. The message names the file (or --set), the line and the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


HeadUnion = Annotated[DBHeadConfig | PANHeadConfig | FCEHeadConfig, Field(discriminator="kind")]


class ModelConfig(Strict):
    """Mirror of `tcm.config.DetectorConfig` (1:1 fields + `preset`), converted by `to_detector()`.

    Mirrored rather than nested because the head needs a discriminated union (errors then name the one head
    kind given, not all three); `tests/pipelines/test_config.py` checks the fields stay in step.
    """

    kind: ClassVar[Literal["detector"]] = "detector"  # the task (pipelines.tasks.task_for); YAML may omit it
    preset: Literal["rn50", "tiny"] = "rn50"  # rn50 = the paper's CLIP RN50; tiny = DetectorConfig.tiny() for CPU
    clip: ClipConfig = Field(default_factory=ClipConfig)
    tcm: TCMConfig = Field(default_factory=TCMConfig)
    head: HeadUnion = Field(default_factory=DBHeadConfig)
    input_size: int = Field(640, gt=0, multiple_of=32)  # training crop (paper); stride-32 backbone
    pixel_mean: tuple[float, float, float] = DetectorConfig.pixel_mean
    pixel_std: tuple[float, float, float] = DetectorConfig.pixel_std

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """Fill what the YAML leaves out from the preset, so a flat YAML only states what differs."""
        if isinstance(data, Mapping) and data.get("kind") == "detector":
            data = {k: v for k, v in data.items() if k != "kind"}  # the tag, not a DetectorConfig field
        if not isinstance(data, Mapping) or data.get("preset", "rn50") != "tiny":
            return data
        given_head = data.get("head") if isinstance(data.get("head"), Mapping) else {}
        kind = given_head.get("kind", "db")
        base_cfg = DetectorConfig.tiny(head=_tiny_head(kind))
        base = {f.name: _as_plain(getattr(base_cfg, f.name)) for f in dataclasses.fields(DetectorConfig)}
        return _deep_merge(base, dict(data))

    def to_detector(self) -> DetectorConfig:
        """The tcm dataclass (fields 1:1; `kind` and `preset` are the pipeline's)."""
        return DetectorConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DetectorConfig)})

    @classmethod
    def from_detector(cls, det: DetectorConfig) -> ModelConfig:
        return cls.model_validate({f.name: _as_plain(getattr(det, f.name)) for f in dataclasses.fields(det)})


class RecognizerModelConfig(Strict):
    """`model.kind: recognizer`: CLIP4STR, the frozen `tcm.recognition.RecognizerConfig` nested as `recognizer`
    (validated field by field by pydantic, unknown keys named), started from a preset."""

    kind: Literal["recognizer"]
    preset: Literal["b16", "tiny"] = "b16"  # b16 = CLIP4STR-B as released; tiny = RecognizerConfig.tiny() for CPU
    recognizer: RecognizerConfig = Field(default_factory=RecognizerConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """The tiny preset fills what `recognizer:` leaves out from `RecognizerConfig.tiny()`."""
        if not isinstance(data, Mapping) or data.get("preset", "b16") != "tiny":
            return data
        given = data.get("recognizer") if isinstance(data.get("recognizer"), Mapping) else {}
        return {**data, "recognizer": _deep_merge(_as_plain(RecognizerConfig.tiny()), given)}

    def to_recognizer(self) -> RecognizerConfig:
        return self.recognizer

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) the word crops are resized to."""
        return self.recognizer.image_size


def _model_kind(value: Any) -> str:
    """The union's tag: `kind`, detector when absent (every YAML from before recognition)."""
    if isinstance(value, Mapping):
        return str(value.get("kind", "detector"))
    return str(getattr(value, "kind", "detector"))


ModelUnion = Annotated[
    Annotated[ModelConfig, Tag("detector")] | Annotated[RecognizerModelConfig, Tag("recognizer")],
    Discriminator(_model_kind),
]


def _tiny_head(kind: str) -> DBHeadConfig | PANHeadConfig | FCEHeadConfig | None:
    """The tiny preset's head of a kind: DB narrows its neck as `DetectorConfig.tiny()` does; others keep theirs."""
    match kind:
        case "db":
            return None  # DetectorConfig.tiny()'s own DB head
        case "pan":
            return PANHeadConfig(neck_channels=32)  # narrow neck to match the tiny towers
        case "fce":
            return FCEHeadConfig(neck_channels=32)
        case _:
            return None  # let validation name the bad kind


class DatasetRef(Strict):
    """One ingested dataset (a folder or s3:// prefix holding Parquet shards + manifest.json)."""

    uri: str
    split: str = "train"
    weight: float = Field(1.0, gt=0)  # mixing weight relative to the other training sets (equal by default)


class DataConfig(Strict):
    train: list[DatasetRef] = Field(default_factory=list)
    val: list[DatasetRef] = Field(default_factory=list)  # concatenated; empty = no validation
    fraction: float = Field(1.0, gt=0, le=1)  # deterministic few-shot subset of training rows (paper: 0.1)
    seed: int = 0  # fixes the few-shot subset and the augmentation streams
    # Reproducible runs: the training stream keeps its block order (Ray Data `preserve_order`), so every run with
    # the same seed feeds the same rows in the same order to the same worker, and a run stopped after epoch k and
    # resumed ends where an uninterrupted run ends (augmentation is drawn from (seed, epoch, row id) either way;
    # full epochs only: `train.steps_per_epoch` cuts a pass short and Ray Data then replays it). Off by default:
    # an ordered stream waits for its slowest augmentation task instead of passing on whatever is ready first
    deterministic: bool = False
    batch_size: int = Field(16, gt=0)  # per worker: TCM configs use samples_per_gpu=16
    augment: AugmentConfig = Field(default_factory=AugmentConfig)  # crop_size defaults to model.input_size
    # recognition: RandAugment of word crops on the CPU workers; image_size defaults to the recogniser's input
    word_augment: WordAugmentConfig = Field(default_factory=WordAugmentConfig)
    word_augment_enabled: bool = True  # False: words only resized + normalised (e.g. clean synthetic words)
    val_batch_size: int = Field(1, gt=0)  # TCM test pipelines run batch 1
    # keep-ratio test resize (mmdet img_scale = (long, short)); TCM IC15 / CTW1500 test at (4068, 1024)
    val_long_side: int = Field(4068, gt=0)
    val_short_side: int = Field(1024, gt=0)
    # cap on the longer side of a resized test image (memory); each image is padded only to multiples of 32,
    # as released (a shared square canvas changed predictions: TCM's global parts see the padding). None = no
    # cap beyond the keep-ratio resize. The name stays from when images were pasted on such a canvas
    val_canvas: int | None = Field(None, gt=0, multiple_of=32)
    map_batch_size: int = Field(4, gt=0)  # rows per augmentation call: 4 x (image + DB maps) at 640 ~ 60 MB
    num_workers: int = Field(2, gt=0)  # concurrent augmentation tasks (2-core CI machine; raise on a cluster)
    cpus_per_task: float = Field(1.0, gt=0)  # CPUs each augmentation task reserves (fractional on small CI)
    # Ray Data's object-store budget for the augmentation stream: blocks waiting for the trainer stop there, so
    # memory stays bounded however long the epoch. 2 GiB holds ~140 rows of image + DB maps at 640 px (~14 MB a
    # row), so both augmentation tasks keep running while the trainer drains: as fast as a DataLoader on 2 cores
    # (ratio 1.07); 1 GiB stalled them (26-29 vs 33 img/s, measured before the read was fused with the
    # augmentation). None: Ray's default share of the object store (benchmarks/ingest_throughput.py)
    object_store_budget_gib: float | None = Field(2.0, gt=0)


class OptimConfig(Strict):
    # AdamW/Adam moments: torch's defaults (TCM uses them); CLIP4STR: betas (0.9, 0.98), eps 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    # by-epoch poly (TCM) or OneCycle by step (CLIP4STR: 7.5% linear warm-up from lr/25, cosine down to lr/1e4)
    schedule: Literal["poly", "onecycle"] = "poly"
    warmup_fraction: float = Field(0.075, ge=0, lt=1)  # onecycle only: share of the steps spent warming up

    kind: Literal["adam", "adamw", "sgd"] = "adamw"  # TCM CTW/TT configs: AdamW (Ranger ones map to AdamW)
    lr: float = Field(1e-4, gt=0)  # TCM DB configs: 1e-4
    weight_decay: float = Field(1e-4, ge=0)  # TCM DB configs: 1e-4 (none on norms and biases)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD only (DBNet's original recipe: 0.9)
    image_encoder_lr_factor: float = Field(0.1, ge=0)  # TCM: backbone lr_mult 0.1
    text_encoder_lr_factor: float = Field(0.0, ge=0)  # TCM: text_encoder lr_mult 0 = frozen
    poly_power: float = Field(0.9, gt=0)  # TCM lr_config: poly, power 0.9, by epoch
    min_lr: float = Field(1e-7, ge=0)  # TCM lr_config: min_lr 1e-7
    grad_clip: float | None = Field(None, gt=0)  # TCM configs: grad_clip=None


class TrainConfig(Strict):
    epochs: int = Field(1200, gt=0)  # TCM fine-tuning runs: 1200 epochs
    steps_per_epoch: int | None = Field(None, gt=0)  # cap on steps per epoch (tests, demo); None = whole shard
    num_workers: int = Field(1, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)  # fractional on small CI machines leaves CPUs for Ray Data
    amp: bool = True  # mixed precision, only ever applied on GPU
    storage_path: str = "runs"  # checkpoints: plain path, file:// or s3://bucket/prefix (endpoint from AWS env)
    checkpoint_every: int = Field(10, gt=0)  # epochs; the last epoch is always checkpointed
    num_to_keep: int = Field(2, gt=0)  # latest checkpoints kept in storage
    max_failures: int = Field(3, ge=-1)  # worker failures retried from the latest checkpoint; -1 = forever
    val_every: int = Field(10, gt=0)  # epochs; the last epoch always validates
    num_overlays: int = Field(4, ge=0)  # validation images drawn as overlays into MLflow
    seed: int = 0
    init_from: str | None = None  # warm start (fine-tune) from a checkpoint folder or models:/ URI
    fail_after_epoch: int | None = None  # test hook: raise after reporting this epoch (simulates a crash)
    # BatchNorm statistics over the global batch, as released (train_ocrclip.py converts the model to SyncBN
    # under DDP). None = on when use_gpu and num_workers > 1; torch's SyncBatchNorm needs GPU tensors
    sync_batchnorm: bool | None = None

    @model_validator(mode="after")
    def _sync_batchnorm_needs_gpu(self) -> TrainConfig:
        if self.sync_batchnorm and not self.use_gpu:
            raise ValueError(
                "train.sync_batchnorm: true needs train.use_gpu: true (torch's SyncBatchNorm runs on GPU tensors "
                "only); leave it unset to get it whenever training runs on more than one GPU worker"
            )
        return self

    def uses_sync_batchnorm(self) -> bool:
        """Whether the train loop converts BatchNorm to SyncBatchNorm (tcm.build.convert_sync_batchnorm)."""
        if self.sync_batchnorm is None:
            return self.use_gpu and self.num_workers > 1
        return self.sync_batchnorm


class MlflowConfig(Strict):
    # None: $MLFLOW_TRACKING_URI (set by the cluster manifests in infra/), else a local sqlite store in the cwd
    tracking_uri: str | None = None
    experiment: str = "tcm"
    artifact_location: str | None = None  # None: beside the checkpoints (<storage_path>/mlflow-artifacts)
    registered_model: str | None = "tcm-detector"  # None = log the model but don't register it
    alias: str = "champion"  # registry alias set on the version this run registers
    # the alias (and retrain's `champion`) only for a model whose validation / benchmark hmean reaches this: a
    # detector that learned nothing (random init, a few steps) scores 0.0 (one frame-sized box or none per
    # image); 0.05 is far below any real detector (TCM-DB IC15 ~0.88, the tiny demo 0.8) and above noise. A
    # recogniser's floor is on its validation word accuracy (val/accuracy): a random one reads 0.0
    # 0 turns the gate off, also for a run that never validated
    promote_min_hmean: float = Field(0.05, ge=0, le=1)
    log_model: bool = True  # mlflow.pytorch.log_model at the end of training

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


class SweepConfig(Strict):
    num_samples: int = Field(12, gt=0)
    max_concurrent: int = Field(1, gt=0)  # trials at once: each holds train.num_workers workers
    num_prompts: list[int] = Field(default_factory=lambda: [4, 18, 32])  # the paper's prompt-count study
    image_encoder_lr_factor: tuple[float, float] = (0.01, 1.0)  # log-uniform range around TCM's 0.1
    text_encoder_lr_factor: list[float] = Field(default_factory=lambda: [0.0, 0.01, 0.1])  # 0 = frozen (TCM)
    lr: tuple[float, float] = (3e-5, 3e-4)  # log-uniform range around TCM's 1e-4
    aux_loss_weight: list[float] = Field(default_factory=lambda: [1.0])  # the paper's lambda; list more to study it
    grace_period: int = Field(1, gt=0)  # ASHA: epochs before a trial can be stopped
    reduction_factor: int = Field(2, gt=1)  # ASHA: keep the top 1/2 at each rung (few trials)
    driver_cpus: float = Field(0.25, ge=0)  # a trial's driver only drives its TorchTrainer
    # recognition (CLIP4STR): text blocks frozen (released: 6 of 12; -1 none), decoder LR factor (released 19),
    # permutations per step (released 6; PARSeq's ablation range)
    text_freeze_layers: list[int] = Field(default_factory=lambda: [0, 6, 12])
    decoder_lr_factor: list[float] = Field(default_factory=lambda: [1.0, 19.0, 38.0])
    perm_num: list[int] = Field(default_factory=lambda: [2, 6, 12])
    seed: int = 0


class EvalConfig(Strict):
    protocol: Literal["iou", "deteval"] = "iou"  # ICDAR 2015 hmean-IoU
    num_actors: int = Field(1, gt=0)  # inference actor pool size (one model copy each)
    batch_size: int = Field(1, gt=0)  # images keep their own size at test time
    use_gpu: bool = False


class ExperimentConfig(Strict):
    name: str = Field("tcm", min_length=1)  # run name: the same name + storage resumes the same run
    model: ModelUnion = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    tune: SweepConfig = Field(default_factory=SweepConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="before")
    @classmethod
    def _crop_follows_input_size(cls, data: Any) -> Any:
        """`data.augment.crop_size` defaults to the model's input size (the two must agree)."""
        if not isinstance(data, Mapping):
            return data
        model = data.get("model") if isinstance(data.get("model"), Mapping) else {}
        if model.get("kind") == "recognizer":
            return _recognizer_defaults(data, model)
        data_sec = data.get("data") if isinstance(data.get("data"), Mapping) else {}
        augment = data_sec.get("augment") if isinstance(data_sec.get("augment"), Mapping) else {}
        if "crop_size" in augment:
            return data
        preset_size = DetectorConfig.tiny().input_size if model.get("preset") == "tiny" else DetectorConfig.input_size
        size = model.get("input_size", preset_size)
        return {**data, "data": {**data_sec, "augment": {**augment, "crop_size": size}}}

    @model_validator(mode="after")
    def _crop_matches_input_size(self) -> ExperimentConfig:
        if isinstance(self.model, RecognizerModelConfig):
            if self.data.word_augment.image_size != self.model.input_size:
                raise ValueError(
                    f"data.word_augment.image_size {self.data.word_augment.image_size} must equal "
                    f"model.recognizer.image_size {self.model.input_size}: the network reads those crops"
                )
            return self
        if self.data.augment.crop_size != self.model.input_size:
            raise ValueError(
                f"data.augment.crop_size ({self.data.augment.crop_size}) must equal model.input_size "
                f"({self.model.input_size}): the network trains on the crops"
            )
        return self

    def detector(self) -> DetectorConfig:
        if not isinstance(self.model, ModelConfig):
            raise ConfigError(f"model.kind is {self.model.kind!r}: this step needs a detector")
        return self.model.to_detector()

    def tcm_config(self) -> DetectorConfig | RecognizerConfig:
        """The tcm dataclass of the configured model, whatever its task."""
        return model_dataclass(self.model)

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "overrides") -> ExperimentConfig:
        """A validated copy with dotted keys replaced: {"model.tcm.num_prompts": 18}."""
        data = self.model_dump(mode="json")
        for key, value in overrides.items():
            _set_dotted(data, key, value, source)
        return validate_config(data, source)

    def flat_params(self) -> dict[str, str]:
        """The resolved config as flat `a.b.c` keys (MLflow params); URIs without any `user:secret@` part."""
        return {k: str(v) for k, v in flatten(redact_uris(self.model_dump(mode="json"))).items()}


# ---------------------------------------------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment, apply `key.sub=value` overrides, validate; one ConfigError for every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror or err})") from None
    try:
        data = yaml.safe_load(text) or {}
        lines = _key_lines(yaml.compose(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    from_set: dict[tuple[str, ...], str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key.sub=value")
        value = yaml.safe_load(raw) if raw.strip() else ""
        _set_dotted(data, key.strip(), value, f"--set {item}")
        from_set[tuple(key.strip().split("."))] = f"--set {item}"
    return validate_config(data, str(path), lines=lines, from_set=from_set)


def validate_config(
    data: Mapping[str, Any],
    source: str,
    *,
    lines: Mapping[tuple[str, ...], int] | None = None,
    from_set: Mapping[tuple[str, ...], str] | None = None,
) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        problems = [_describe(e, data, source, lines or {}, from_set or {}) for e in err.errors()]
        head = f"{source}: invalid config ({len(problems)} problem{'s' if len(problems) > 1 else ''})"
        raise ConfigError("\n  ".join([head, *problems])) from None


def _recognizer_defaults(data: Mapping[str, Any], model: Mapping[str, Any]) -> Mapping[str, Any]:
    """A recogniser registers as `tcm-recognizer` unless `mlflow.registered_model` says otherwise, and
    `data.word_augment.image_size` defaults to its input size (the two must agree)."""
    mlflow_sec = data.get("mlflow") if isinstance(data.get("mlflow"), Mapping) else {}
    if "registered_model" not in mlflow_sec:
        data = {**data, "mlflow": {**mlflow_sec, "registered_model": "tcm-recognizer"}}
    data_sec = data.get("data") if isinstance(data.get("data"), Mapping) else {}
    word = data_sec.get("word_augment") if isinstance(data_sec.get("word_augment"), Mapping) else {}
    if "image_size" in word:
        return data
    rec = model.get("recognizer") if isinstance(model.get("recognizer"), Mapping) else {}
    preset = RecognizerConfig.tiny() if model.get("preset") == "tiny" else RecognizerConfig()
    size = rec.get("image_size", preset.image_size)
    return {**data, "data": {**data_sec, "word_augment": {**word, "image_size": size}}}


def model_dataclass(model: ModelConfig | RecognizerModelConfig) -> DetectorConfig | RecognizerConfig:
    match model:
        case ModelConfig():
            return model.to_detector()
        case RecognizerModelConfig():
            return model.to_recognizer()


def model_config_from_dict(data: Mapping[str, Any], source: str = "checkpoint config") -> DetectorConfig | RecognizerConfig:
    """A model's tcm dataclass from its JSON form (checkpoints, MLflow model metadata): `kind: recognizer`
    nests a RecognizerConfig; anything else (older checkpoints have no kind) is a detector."""
    if data.get("kind") != "recognizer":
        return detector_config_from_dict({k: v for k, v in data.items() if k != "kind"}, source)
    try:
        return RecognizerModelConfig.model_validate(data).to_recognizer()
    except ValidationError as err:
        problems = [_describe(e, data, source, {}, {}) for e in err.errors()]
        raise ConfigError("\n  ".join([f"{source}: invalid model config", *problems])) from None


def model_config_to_dict(cfg: DetectorConfig | RecognizerConfig) -> dict[str, Any]:
    match cfg:
        case DetectorConfig():
            return detector_config_to_dict(cfg)
        case RecognizerConfig():
            return {"kind": "recognizer", "recognizer": _as_plain(cfg)}
        case _:
            raise TypeError(f"not a model config: {type(cfg).__name__}")


def detector_config_from_dict(data: Mapping[str, Any], source: str = "checkpoint config") -> DetectorConfig:
    """A DetectorConfig from its JSON form (checkpoints, MLflow model metadata)."""
    try:
        return ModelConfig.model_validate(data).to_detector()
    except ValidationError as err:
        problems = [_describe(e, data, source, {}, {}) for e in err.errors()]
        raise ConfigError("\n  ".join([f"{source}: invalid model config", *problems])) from None


def detector_config_to_dict(det: DetectorConfig) -> dict[str, Any]:
    return ModelConfig.from_detector(det).model_dump(mode="json", exclude={"preset"})


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


# ---------------------------------------------------------------------------------------------------- helpers


def _as_plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _set_dotted(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _key_lines(node: yaml.Node | None, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Dotted key path -> 1-based line of the key in the YAML text."""
    out: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
            out[path] = key_node.start_mark.line + 1
            out.update(_key_lines(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = (*prefix, str(i))
            out[path] = item.start_mark.line + 1
            out.update(_key_lines(item, path))
    return out


_UNION_TAGS = {"DBHeadConfig", "PANHeadConfig", "FCEHeadConfig", "db", "pan", "fce", "detector", "recognizer"}


def _data_path(loc: tuple[Any, ...], data: Any) -> tuple[str, ...]:
    """The dotted key of an error in the input: pydantic's union tags ('db', 'DBHeadConfig') are dropped."""
    path: list[str] = []
    node = data
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list | tuple) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif part in _UNION_TAGS:
            continue
        else:  # a required key the input lacks
            node = None
        path.append(str(part))
    return tuple(path)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(
    err: Any,
    data: Mapping[str, Any],
    source: str,
    lines: Mapping[tuple[str, ...], int],
    from_set: Mapping[tuple[str, ...], str],
) -> str:
    path = _data_path(tuple(err["loc"]), data)
    key = ".".join(path) or "(top level)"
    match err["type"]:
        case "extra_forbidden" | "unexpected_keyword_argument":
            message = "unknown key"
        case "missing" | "missing_argument":
            message = "required key is missing"
        case "value_error":  # our own checks: the message already says what and why
            message = err["msg"].removeprefix("Value error, ")
        case _:
            message = f"{err['msg']} (got {_short(err.get('input'))})"
    where = next((from_set[path[:i]] for i in range(len(path), 0, -1) if path[:i] in from_set), None)
    if where is None:
        line = next((lines[path[:i]] for i in range(len(path), 0, -1) if path[:i] in lines), None)
        where = f"{source}:{line}" if line else source
    return f"{where}: {key}: {message}" if path else f"{where}: {message}"
