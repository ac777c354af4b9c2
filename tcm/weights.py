"""Load CLIP weights into the TCM towers from a local path or an s3:// URI, without executing pickled code.

Two formats are read:
- OpenAI's TorchScript archive (`RN50.pt`): a zip whose `data.pkl` is read by a restricted unpickler that rebuilds
  tensors only (TorchScript module objects become inert attribute holders; any other global is refused). torch
  refuses `weights_only=True` on TorchScript archives, and `torch.jit.load` would run the archive's code.
- open_clip / torch.save state dicts (optionally wrapped as {"state_dict": ...} with `module.` prefixes), read with
  `torch.load(weights_only=True)`.

Key mapping: `visual.*` -> `ImageEncoder.resnet`; `token_embedding`, `positional_embedding`, `transformer.*`,
`ln_final.*`, `text_projection` -> `TextEncoder.clip`. The text positional table is truncated to the prompt length;
the attention-pool positional table is bilinearly resized when its grid differs.

The recogniser's ViT towers (tcm/recognition/encoder.py) load through `load_clip_vit_weights` with the same readers:
`visual.*` -> open_clip `VisionTransformer`, text keys -> open_clip `TextTransformer` (77 positions sliced to 16).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tcm.backbone.image import ImageEncoder, resize_positional_embedding
from tcm.backbone.text import TextEncoder

TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
# CLIP entries that no TCM module holds: the contrastive temperature and OpenAI's int attributes / mask tensors
IGNORED_KEYS = ("logit_scale", "logit_bias", "input_resolution", "context_length", "vocab_size")
POOL_POS_KEY = "visual.attnpool.positional_embedding"

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


@dataclass
class LoadReport:
    """What a CLIP checkpoint contributed. `unexpected` lists entries that nothing used (warned about)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- reading bytes


def read_bytes(uri: str) -> bytes:
    """Bytes of a local path or an s3://bucket/key object (endpoint from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)."""
    if uri.startswith("s3://"):
        import boto3  # only needed for object storage

        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise ValueError(f"{uri}: expected s3://bucket/key")
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client = boto3.client("s3", endpoint_url=endpoint)
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    path = Path(uri.removeprefix("file://"))
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights not found: {uri} (ClipConfig.weights)")
    return path.read_bytes()


# ------------------------------------------------------------------------------------ TorchScript, tensors only


class _ScriptObject:
    """Inert stand-in for a TorchScript class instance: keeps the pickled attributes, has no behaviour."""

    def __init__(self, *args: Any):
        self.attrs: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.attrs = dict(state) if isinstance(state, dict) else {}


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


def _rebuild_tensor(storage: Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> Tensor:
    return torch.as_strided(storage, size, stride, offset)


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """Rebuilds tensors, OrderedDicts and inert TorchScript objects; refuses every other global."""

    def __init__(self, data: bytes, read_storage: Callable[[str], bytes], source: str):
        super().__init__(io.BytesIO(data))
        self._read_storage = read_storage
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        match module, name:
            case "torch._utils", "_rebuild_tensor_v2":
                return _rebuild_tensor
            case "torch", _ if name in _STORAGE_DTYPES:
                return _StorageType(_STORAGE_DTYPES[name])
            case "collections", "OrderedDict":
                return OrderedDict
            case "torch.jit._pickle", "restore_type_tag":
                return lambda value, _type: value
            case "torch.jit._pickle", ("build_intlist" | "build_doublelist" | "build_boollist" | "build_tensorlist"):
                return list
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        raise pickle.UnpicklingError(
            f"{self._source}: refusing to load global {module}.{name} from a TorchScript archive "
            "(only tensors are read; tcm/weights.py)"
        )

    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"{self._source}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        data = self._read_storage(str(key))
        if not data:
            return torch.empty(0, dtype=storage_type.dtype)
        return torch.frombuffer(bytearray(data), dtype=storage_type.dtype)  # (numel,) flat storage


def _flatten(obj: Any, prefix: str, out: dict[str, Tensor], seen: set[int]) -> None:
    if isinstance(obj, Tensor):
        out[prefix] = obj
    elif isinstance(obj, _ScriptObject) and id(obj) not in seen:
        seen.add(id(obj))
        for key, value in obj.attrs.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out, seen)


def is_torchscript_archive(data: bytes) -> bool:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return False
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return any(name.count("/") == 1 and name.endswith("/constants.pkl") for name in z.namelist())


def read_torchscript_tensors(data: bytes, source: str) -> dict[str, Tensor]:
    """All tensors of a TorchScript archive's module hierarchy, by dotted attribute path, without running code."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        pkl = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{source}: TorchScript archive without a single <root>/data.pkl ({len(pkl)} found)")
        root = pkl[0].split("/")[0]
        if f"{root}/byteorder" in names and z.read(f"{root}/byteorder").strip() not in (b"", b"little"):
            raise ValueError(f"{source}: big-endian TorchScript archives are not supported")
        unpickler = _TensorsOnlyUnpickler(z.read(pkl[0]), lambda key: z.read(f"{root}/data/{key}"), source)
        try:
            module = unpickler.load()
        except pickle.UnpicklingError as e:
            raise ValueError(str(e)) from e
    out: dict[str, Tensor] = {}
    _flatten(module, "", out, set())
    if not out:
        raise ValueError(f"{source}: no tensors found in the TorchScript archive")
    return out


# ----------------------------------------------------------------------------------------------- state dicts


def read_clip_state_dict(uri: str) -> dict[str, Tensor]:
    """CLIP tensors by open_clip key from an OpenAI TorchScript archive or a (wrapped) torch.save state dict."""
    data = read_bytes(uri)
    if is_torchscript_archive(data):
        return read_torchscript_tensors(data, uri)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{uri}: not a plain tensor checkpoint, refusing to unpickle it: {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # open_clip training checkpoints: {"epoch", "name", "state_dict", "optimizer"}
    if not isinstance(obj, dict):
        raise ValueError(f"{uri}: expected a state dict, got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, Tensor)}


def _is_ignored(key: str, image_has_pool: bool, has_text: bool) -> bool:
    if key in IGNORED_KEYS or key.endswith("attn_mask") or key.endswith("num_batches_tracked"):
        return True
    if not image_has_pool and key.startswith("visual.attnpool."):
        return True  # the baseline has no attention pool
    return not has_text and key.startswith(TEXT_PREFIXES)


def _fit_and_copy(
    uri: str,
    source: dict[str, Tensor],
    modules: dict[str, torch.nn.Module],
    adapt: Callable[[str, Tensor, Tensor, LoadReport], Tensor],
    report: LoadReport,
    hint: str,
) -> dict[str, Tensor]:
    """Copy `source` into `modules` (checkpoint key prefix -> module whose state-dict keys follow it), in place.
    `adapt(key, theirs, ours, report)` may reshape a checkpoint tensor first. Raises ValueError naming every
    missing or mis-shaped key. Returns the targets (checkpoint key -> our tensor)."""
    targets: dict[str, Tensor] = {}
    for prefix, module in modules.items():
        targets.update({f"{prefix}{k}": v for k, v in module.state_dict().items()})
    missing, mismatched, updates = [], [], {}
    for key, ours in targets.items():
        if key not in source:
            if not key.endswith("num_batches_tracked"):  # OpenAI archives may lack BN counters
                missing.append(key)
            continue
        theirs = adapt(key, source[key], ours, report)
        if theirs.shape != ours.shape:
            mismatched.append(f"{key}: checkpoint {tuple(theirs.shape)} vs model {tuple(ours.shape)}")
            continue
        updates[key] = theirs
    if missing or mismatched:
        lines = [f"missing: {k}" for k in missing] + [f"shape: {m}" for m in mismatched]
        more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
        raise ValueError(
            f"{uri}: CLIP weights do not fit the configured towers ({hint}):\n  " + "\n  ".join(lines[:20]) + more
        )
    with torch.no_grad():
        for prefix, module in modules.items():
            for name, tensor in _named_tensors(module).items():
                if f"{prefix}{name}" in updates:
                    tensor.copy_(updates[f"{prefix}{name}"])
    report.loaded = sorted(updates)
    return targets


def _truncate_text_positions(key: str, theirs: Tensor, ours: Tensor, report: LoadReport) -> Tensor:
    """CLIP's 77-row text positional table sliced to the model's first rows (not interpolated)."""
    if key == "positional_embedding" and theirs.shape[0] >= ours.shape[0] and theirs.shape[1:] == ours.shape[1:]:
        if theirs.shape[0] != ours.shape[0]:
            report.resized.append(key)
        return theirs[: ours.shape[0]]
    return theirs


def _warn_unexpected(uri: str, report: LoadReport) -> None:
    if report.unexpected:
        warnings.warn(
            f"{uri}: {len(report.unexpected)} checkpoint entries were not used: {report.unexpected[:10]}",
            stacklevel=3,
        )


def load_clip_weights(image_encoder: ImageEncoder, text_encoder: TextEncoder | None, uri: str) -> LoadReport:
    """Copy CLIP weights into the towers (in place). Raises ValueError naming every missing or mis-shaped key;
    warns about entries nothing used."""
    source = read_clip_state_dict(uri)
    report = LoadReport(uri)

    def adapt(key: str, theirs: Tensor, ours: Tensor, report: LoadReport) -> Tensor:
        if key == POOL_POS_KEY and theirs.shape != ours.shape and theirs.shape[1:] == ours.shape[1:]:
            S = int(round((ours.shape[0] - 1) ** 0.5))
            report.resized.append(key)
            return resize_positional_embedding(theirs.float(), S, S)  # other pretraining grid -> ours
        return _truncate_text_positions(key, theirs, ours, report)  # 77 positions -> K + prompt_length

    modules: dict[str, torch.nn.Module] = {"visual.": image_encoder.resnet}
    if text_encoder is not None:
        modules[""] = text_encoder.clip
    targets = _fit_and_copy(uri, source, modules, adapt, report, "check ClipConfig sizes")
    report.unexpected = sorted(
        k for k in source
        if k not in targets and not _is_ignored(k, image_encoder.resnet.attnpool is not None, text_encoder is not None)
    )
    _warn_unexpected(uri, report)
    return report


def _named_tensors(module: torch.nn.Module) -> dict[str, Tensor]:
    return dict(module.named_parameters()) | dict(module.named_buffers())


def init_clip_weights(image_encoder: ImageEncoder, text_encoder: TextEncoder | None, uri: str | None) -> LoadReport | None:
    """Load `uri` if given; otherwise keep the random initialisation and warn loudly."""
    if uri is None:
        warnings.warn(
            "No CLIP weights given (ClipConfig.weights is None): the towers start from random initialisation and "
            "detection results will be poor. Set clip.weights to RN50.pt or an open_clip state dict.",
            stacklevel=2,
        )
        return None
    return load_clip_weights(image_encoder, text_encoder, uri)


# ------------------------------------------------------------------------------------- ViT CLIP (recognition)

VIT_POS_KEY = "visual.positional_embedding"


def load_clip_vit_weights(visual: torch.nn.Module, text: torch.nn.Module | None, uri: str) -> LoadReport:
    """Copy a ViT CLIP checkpoint (OpenAI ViT-B-16.pt TorchScript, fp16 there, or an open_clip state dict) into
    open_clip towers, in place: `visual.*` -> `visual` (a VisionTransformer), the text keys -> `text` (a
    TextTransformer; None = image tower only). The text positional table is sliced to the tower's context (77 ->
    16 for CLIP4STR). CLIP checkpoints are taken to be pretrained on a square patch grid (every OpenAI and
    open_clip ViT is): when the model's grid differs (e.g. 2 x 8 for a 32x128 input at B/16), the image positional
    table is bilinearly resized to it, even if the number of rows happens to match. Raises ValueError naming every missing or mis-shaped key; warns about entries nothing used."""
    source = read_clip_state_dict(uri)
    report = LoadReport(uri)

    def adapt(key: str, theirs: Tensor, ours: Tensor, report: LoadReport) -> Tensor:
        if key == VIT_POS_KEY and theirs.shape[1:] == ours.shape[1:]:
            gh, gw = visual.grid_size  # type: ignore[attr-defined]
            S = math.isqrt(theirs.shape[0] - 1)  # CLIP checkpoints are pretrained on square grids (14x14 at B/16)
            if S * S == theirs.shape[0] - 1 and (S, S) != (gh, gw):  # also when only the grid's shape differs
                report.resized.append(key)
                return resize_positional_embedding(theirs.float(), gh, gw)  # CLS kept, S x S -> gh x gw
        return _truncate_text_positions(key, theirs, ours, report)

    modules: dict[str, torch.nn.Module] = {"visual.": visual}
    if text is not None:
        modules[""] = text
    targets = _fit_and_copy(uri, source, modules, adapt, report, "check the RecognizerConfig tower sizes")
    report.unexpected = sorted(
        k for k in source
        if k not in targets
        and k not in IGNORED_KEYS
        and not k.endswith("attn_mask")
        and not (text is None and k.startswith(TEXT_PREFIXES))
    )
    _warn_unexpected(uri, report)
    return report


def init_clip_vit_weights(visual: torch.nn.Module, text: torch.nn.Module | None, uri: str | None) -> LoadReport | None:
    """Load `uri` into the ViT CLIP towers if given; otherwise keep the random initialisation and warn loudly."""
    if uri is None:
        warnings.warn(
            "No CLIP weights given (RecognizerConfig.weights is None): the recogniser's CLIP towers start from "
            "random initialisation and recognition will need far longer training. Set weights to ViT-B-16.pt "
            "(OpenAI) or an open_clip ViT-B-16 state dict.",
            stacklevel=3,  # points at the caller of build_recognizer
        )
        return None
    return load_clip_vit_weights(visual, text, uri)
