"""Recognition (CLIP4STR): word rows -> crops resized + RandAugment + token ids on CPU workers; the
permutation-LM loss through DDP; greedy predict-and-refine decoding; word accuracy and 1 - NED on the
36-character protocol with a per-dataset table, a per-word file and a grid of sample crops as artifacts."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from tcm.recognition.charset import CHARSET_36, CharsetAdapter, preprocess_label
from tcm.recognition.config import RecognizerConfig

EVAL_COLUMNS = ["id", "image", "label", "dataset"]  # word row columns validation reads
PROTOCOL_CHARSET = CHARSET_36  # STR benchmarks compare lowercase alphanumerics (reference/clip4str.md)


class LossForward(nn.Module):
    """What DDP wraps: CLIP4STR computes its loss inside one forward (teacher forcing over K permutations), so
    the whole loss runs under DDP's hooks and the gradients are all-reduced."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.loss(images, tokens)


def token_batch(batch: Mapping[str, Any], *, charset: str, max_length: int) -> dict[str, np.ndarray]:
    """Encoded words {"image", "label"} -> {"image", "tokens"}: labels through the STR preprocessing for the
    model's charset (words it drops leave the batch), token ids [B] chars [E] [P]... padded to a fixed
    max_length + 2 so batches of any block stack (`losses` trims the padding columns)."""
    from tcm.recognition.tokenizer import Tokenizer

    tok = Tokenizer(charset)
    keep, rows = [], []
    for i, label in enumerate(batch.get("label", [])):
        p = preprocess_label(str(label), charset, max_length)
        if p.label is None:
            continue
        keep.append(i)
        rows.append([tok.bos_id, *(tok.stoi[c] for c in p.label), tok.eos_id])
    tokens = np.full((len(rows), max_length + 2), tok.pad_id, np.int64)  # (B, L_max + 2)
    for b, row in enumerate(rows):
        tokens[b, : len(row)] = row
    return {"image": np.asarray(batch["image"])[keep], "tokens": tokens}


def eval_batch(batch: pa.Table, *, aug_cfg: Any) -> dict[str, np.ndarray]:
    """Word rows -> {"id", "dataset", "label", "image" (B, 3, H, W) float32}: resized + normalised only."""
    from pipelines.words import encode_word_batch

    encoded = encode_word_batch(batch, aug_cfg=aug_cfg, seed=0, epoch=0, augment=False)
    if not encoded:
        return {}
    cols = batch.to_pydict()
    return {
        "id": np.asarray([str(i) for i in cols["id"]], dtype=object),
        "dataset": np.asarray([str(d) for d in cols.get("dataset", [""] * len(cols["id"]))], dtype=object),
        "label": np.asarray(cols["label"], dtype=object),
        "image": encoded["image"],
    }


def word_scores(pairs: Sequence[tuple[str, str]], charset: int = 36) -> dict[str, float]:
    """(prediction, ground truth) pairs -> accuracy, 1 - NED (fractions) and the counted words, by the STR
    protocol of `tcm.evaluation_str` (GT preprocessed, predictions through the charset adapter)."""
    from tcm.evaluation_str import score_words

    r = score_words([(str(i), gt) for i, (_, gt) in enumerate(pairs)], {str(i): p for i, (p, _) in enumerate(pairs)},
                    charset=charset)  # fmt: skip
    return {"accuracy": r.accuracy, "one_minus_ned": r.one_minus_ned, "words": float(r.n)}


def accuracy_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per dataset plus "combined" (sample-weighted), by `tcm.evaluation_str` on the 36-char protocol."""
    from tcm.evaluation_str import results_table, score_words

    by_set: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_set.setdefault(r["dataset"] or "words", []).append(r)
    results = [
        score_words([(r["id"], r["gt"]) for r in part], {r["id"]: r["pred"] for r in part}, charset=36, dataset=name)
        for name, part in sorted(by_set.items())
    ]
    return [{"dataset": t.dataset, "words": float(t.n), "accuracy": t.accuracy, "one_minus_ned": t.one_minus_ned}
            for t in results_table(results)]  # fmt: skip


class RecognitionTask:
    kind = "recognition"
    primary_metric = "accuracy"
    report_metrics = ("accuracy", "one_minus_ned")

    def build_model(self, model_cfg: RecognizerConfig, *, pretrained: bool) -> nn.Module:
        from tcm.recognition.build import build_recognizer

        return build_recognizer(model_cfg, pretrained=pretrained)

    def decoder(self, model_cfg: RecognizerConfig) -> Any:
        from tcm.recognition.tokenizer import Tokenizer

        return Tokenizer(model_cfg.charset)

    def train_dataset(self, cfg: Any, epoch: int) -> Any:
        import ray.data

        from pipelines.train import train_split
        from pipelines.words import word_train_dataset

        d, rec = cfg.data, cfg.tcm_config()
        words = word_train_dataset(
            [(ref.uri, ref.weight) for ref in d.train],
            train_split(cfg),
            aug_cfg=d.word_augment,
            seed=d.seed,
            epoch=epoch,
            fraction=d.fraction,
            augment=d.word_augment_enabled,
            batch_size=d.map_batch_size,
            num_workers=d.num_workers,
            cpus_per_task=d.cpus_per_task,
            deterministic=d.deterministic,
        )
        # the encode stage's CPU share (and compute), so Ray Data fuses the two: with the default 1 CPU per task the
        # token stage never got scheduled beside a sweep trial (driver 0.1 + 2 workers x 0.5 + encode 0.5 of 2 CPUs)
        return words.map_batches(
            token_batch,
            fn_kwargs={"charset": rec.charset, "max_length": rec.max_label_length},
            compute=ray.data.TaskPoolStrategy(size=d.num_workers),
            num_cpus=d.cpus_per_task,
        )

    def eval_dataset(self, cfg: Any, ref: Any, model_cfg: RecognizerConfig) -> Any:
        import ray.data

        from pipelines.augment import select_rows

        d = cfg.data
        rows = select_rows([(ref.uri, 1.0)], ref.split, seed=d.seed, num_workers=d.num_workers,
                           cpus_per_task=d.cpus_per_task, columns=EVAL_COLUMNS, shuffle_files=False)  # fmt: skip
        return rows.map_batches(
            eval_batch,
            batch_size=d.map_batch_size,
            batch_format="pyarrow",
            compute=ray.data.TaskPoolStrategy(size=d.num_workers),
            num_cpus=d.cpus_per_task,
            fn_kwargs={"aug_cfg": d.word_augment},
        )

    def train_module(self, model: nn.Module) -> nn.Module:
        return LossForward(model)

    def losses(
        self, ddp: nn.Module, model: nn.Module, batch: dict[str, torch.Tensor], amp: AbstractContextManager
    ) -> dict[str, torch.Tensor]:
        tokens = batch["tokens"]  # (B, L_max + 2), padded with [P]
        L2 = int((tokens != model.tokenizer.pad_id).sum(1).max())  # the batch's longest word + 2
        with amp:
            losses = ddp(batch["image"], tokens[:, :L2])
        return {k: v.float() for k, v in losses.items()}

    def predict_dataset(self, ds: Any, model_uri: str, tracking_uri: str | None, cfg: Any) -> list[dict[str, Any]]:
        """Batch inference over eval word rows with an actor pool (`eval.num_actors` model copies)."""
        import ray.data

        preds = ds.map_batches(
            WordPredictor,
            fn_constructor_kwargs={"model_uri": model_uri, "tracking_uri": tracking_uri, "use_gpu": cfg.eval.use_gpu},
            batch_size=cfg.eval.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=cfg.eval.num_actors),
            num_gpus=1 if cfg.eval.use_gpu else 0,
        )
        keys = ("id", "dataset", "gt", "pred")
        return [{**{k: str(r[k]) for k in keys}, "confidence": float(r["confidence"])} for r in preds.iter_rows()]

    def search_space(self, cfg: Any) -> dict[str, Any]:
        return search_space(cfg)

    def trial_overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        return trial_overrides(params)

    def param_groups(self, model: nn.Module, cfg: Any) -> list[dict[str, Any]]:
        from tcm.recognition.optim import param_groups

        return param_groups(model, cfg.tcm_config(), cfg.optim.lr, cfg.optim.weight_decay)

    @torch.inference_mode()
    def predict_rows(
        self, model: nn.Module, decoder: Any, shard: Any, cfg: Any, device: torch.device,
        keep: Callable[[str], bool],
    ) -> list[dict[str, Any]]:
        was_training = model.training
        model.eval()
        rows: list[dict[str, Any]] = []
        try:
            for batch in shard.iter_batches(batch_size=cfg.data.batch_size, batch_format="numpy"):
                sel = [i for i, rid in enumerate(batch["id"]) if keep(str(rid))]
                if not sel:
                    continue
                images = torch.from_numpy(np.asarray(batch["image"][sel], dtype=np.float32))  # (B, 3, H, W)
                texts, confs = decoder.decode(model(images.to(device))["logits"])
                for j, i in enumerate(sel):
                    rows.append({"id": str(batch["id"][i]), "dataset": str(batch["dataset"][i]),
                                 "gt": str(batch["label"][i]), "pred": texts[j], "confidence": confs[j]})  # fmt: skip
        finally:
            model.train(was_training)
        return rows

    def score(
        self, rows: Sequence[Mapping[str, Any]], cfg: Any, out_dir: Path | None, *, num_samples: int = 0,
        images: Callable[[Sequence[str]], Mapping[str, np.ndarray]] | None = None,
    ) -> dict[str, float]:
        rows = sorted(rows, key=lambda r: r["id"])
        table = accuracy_table(rows)
        combined = table[-1]
        metrics = {"accuracy": combined["accuracy"], "one_minus_ned": combined["one_minus_ned"],
                   "words": combined["words"]}  # fmt: skip
        if out_dir is None:
            return metrics
        from tcm.evaluation_str import TableRow, format_table

        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (out_dir / "accuracy_table.json").write_text(json.dumps(table, indent=2))
        (out_dir / "accuracy_table.md").write_text(format_table([TableRow(r["dataset"], int(r["words"]), r["accuracy"],
                                                                        r["one_minus_ned"]) for r in table]) + "\n")  # fmt: skip
        (out_dir / "per_word.json").write_text(json.dumps(rows, indent=2))
        if num_samples and images is not None and rows:
            wrong = [r for r in rows if CharsetAdapter(PROTOCOL_CHARSET)(r["pred"]) != CharsetAdapter(PROTOCOL_CHARSET)(r["gt"])]
            chosen = (wrong + [r for r in rows if r not in wrong])[:num_samples]  # errors first
            sample_grid(chosen, images([r["id"] for r in chosen]), out_dir / "samples.png")
        return metrics


def sample_grid(rows: Sequence[Mapping[str, Any]], images: Mapping[str, np.ndarray], path: Path) -> None:
    """Crops in a grid, each titled `prediction (confidence)` and, when wrong, `gt: ...` (green right, red wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["id"] in images]
    if not shown:
        return
    cols = min(4, len(shown))
    n_rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(3 * cols, 1.4 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    adapt = CharsetAdapter(PROTOCOL_CHARSET)
    for ax, r in zip(axes.ravel(), shown, strict=False):
        ax.imshow(images[r["id"]][:, :, ::-1])  # BGR -> RGB
        ok = adapt(r["pred"]) == adapt(r["gt"])
        title = f"{r['pred'] or '(empty)'} ({r['confidence']:.2f})" + ("" if ok else f"\ngt: {r['gt']}")
        ax.set_title(title, fontsize=8, color="green" if ok else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


class WordPredictor:
    """Ray Data actor: loads the recogniser once, reads and decodes batches of eval word rows."""

    def __init__(self, model_uri: str, tracking_uri: str | None, use_gpu: bool):
        from pipelines import registry

        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = registry.load_model(model_uri, tracking_uri).model.to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = torch.from_numpy(np.asarray(batch["image"], dtype=np.float32))  # (B, 3, H, W)
        texts, confs = self.model.tokenizer.decode(self.model(images.to(self.device))["logits"])
        return {"id": batch["id"], "dataset": batch["dataset"], "gt": batch["label"],
                "pred": np.asarray(texts, dtype=object), "confidence": np.asarray(confs, dtype=np.float64)}  # fmt: skip


def search_space(cfg: Any) -> dict[str, Any]:
    """CLIP4STR's knobs: how much of CLIP's text tower stays frozen, the decoders' LR factor, K permutations,
    and the base LR."""
    from ray import tune

    t = cfg.tune
    return {
        "text_freeze_layers": tune.choice(list(t.text_freeze_layers)),
        "decoder_lr_factor": tune.choice(list(t.decoder_lr_factor)),
        "perm_num": tune.choice(list(t.perm_num)),
        "lr": tune.loguniform(*t.lr),
    }


def trial_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "model.recognizer.text_freeze_layers": int(params["text_freeze_layers"]),
        "model.recognizer.decoder_lr_factor": float(params["decoder_lr_factor"]),
        "model.recognizer.perm_num": int(params["perm_num"]),
        "optim.lr": float(params["lr"]),
    }
