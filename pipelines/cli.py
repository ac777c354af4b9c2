"""`tcm`: one command-line entry point for every stage. Each command lives in its stage's module.

A command's module is imported only when that command runs or its own `--help` is asked for: `tcm --help`
lists the commands from their docstrings (read with `ast`, nothing imported), so the CLI answers at once and
torch, Ray, open_clip and MLflow load only for the command that needs them (tests/pipelines/test_cli.py).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

# name: (module, function) of every command defined in its stage's module, in the order `tcm --help` lists them
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pipelines.demo", "demo_command"),
    "train": ("pipelines.train", "train_command"),
    "tune": ("pipelines.tune", "tune_command"),
    "evaluate": ("pipelines.evaluate", "evaluate_command"),
    "predict": ("pipelines.predict", "predict_command"),
    "recognize": ("pipelines.recognize", "recognize_command"),
    "spot": ("pipelines.spot", "spot_command"),
    "check-targets": ("pipelines.check_targets", "check_targets_command"),
    "score": ("pipelines.score", "score_command"),
    "export": ("pipelines.export", "export_command"),
    "submit": ("pipelines.submit", "submit_command"),
    "retrain": ("pipelines.retrain", "retrain_command"),
    "cross-eval": ("pipelines.cross_eval", "cross_eval_command"),
}


@functools.cache
def _docstring(module: str, function: str) -> str:
    """A command function's docstring read from its module's source without importing the module."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return ast.get_docstring(node) or ""
    return ""


class LazyGroup(TyperGroup):
    """Typer's group with the commands of `lazy` resolved on demand (see the module docstring)."""

    lazy: dict[str, tuple[str, str]] = LAZY_COMMANDS
    _listing = False  # True while the group's own help is written: placeholders carry the summaries

    def list_commands(self, ctx: typer.Context) -> list[str]:
        """Commands defined here, then the stage commands, then sub-groups (`pipeline`)."""
        plain = [n for n, c in self.commands.items() if not isinstance(c, TyperGroup)]
        groups = [n for n, c in self.commands.items() if isinstance(c, TyperGroup)]
        return [*plain, *self.lazy, *groups]

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        if cmd_name in self.commands or cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, function = self.lazy[cmd_name]
        if self._listing:
            return typer.core.TyperCommand(cmd_name, help=_docstring(module, function))
        return _load(cmd_name, module, function, self.rich_markup_mode)

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


class LazyPipelineGroup(LazyGroup):
    lazy = {"run": ("pipelines.workflow", "pipeline_run_command")}


@functools.cache
def _load(name: str, module: str, function: str, markup: typer.core.MarkupMode) -> Any:
    """The real command: its stage module imported now."""
    from typer.main import get_command_from_info
    from typer.models import CommandInfo

    callback = getattr(importlib.import_module(module), function)
    return get_command_from_info(CommandInfo(name=name, callback=callback), pretty_exceptions_short=True, rich_markup_mode=markup)


app = typer.Typer(
    name="tcm",
    cls=LazyGroup,
    help="Train, sweep, evaluate and ship TCM scene-text detectors and CLIP4STR recognisers on Ray + MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

FORMAT_HELP = "Dataset format: icdar2013, icdar2015, td500, ctw1500, totaltext, mlt17."
WORD_FORMAT_HELP = (
    " Word (recognition) formats: lmdb (folder / s3:// prefix with data.mdb), icdar2015-words (word_<n>.png + "
    "gt.txt), crops (--src is a detection ingest destination: its instances become rectified word crops; "
    "rows keep their dataset name). Details: docs/words.md."
)


def fail(message: str) -> None:
    """One clear line on stderr and exit 1 (no traceback for expected errors)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@app.command()
def synth(
    format: str = typer.Option(
        ..., "--format", help=FORMAT_HELP + " With --task recognition: icdar2015-words or lmdb."
    ),
    out: Path = typer.Option(..., "--out", help="Folder to write images and annotations into (created)."),
    n: int = typer.Option(100, "--n", min=1, help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives byte-identical files."),
    split: str = typer.Option("train", "--split", help="Split name used in file layout where the format has one."),
    size: int = typer.Option(256, "--size", min=64, help="Image side in pixels (square)."),
    task: str = typer.Option(
        "detection", "--task", help="detection: scene images with polygons; recognition: word images with labels."
    ),
    style: str = typer.Option(
        "varied",
        "--style",
        help="--task recognition only: varied (fonts, colours, blur, perspective, curves: the default) or clean "
        "(one monospaced font, lower-case words <= 8 letters on a fixed canvas: the tiny CPU recipe's set, "
        "docs/recognition.md).",
    ),
) -> None:
    """Render synthetic scene-text images with exact polygons (or, --task recognition, word images with
    labels), written in a dataset's own format."""
    from tcm.data.synth import write_dataset

    if task == "recognition":
        from tcm.data.synth_words import write_dataset as write_words

        try:
            words = write_words(format, out, n=n, seed=seed, split=split, style=style)
        except ValueError as err:
            fail(str(err))
        typer.echo(f"wrote {len(words)} word images in {format} format to {out / split}")
        return
    if task != "detection":
        fail(f"unknown --task {task!r}; expected detection or recognition")
    try:
        written = write_dataset(format, out, n=n, seed=seed, split=split, height=size, width=size)
    except ValueError as err:
        fail(str(err))
    instances = sum(len(inst) for _, inst in written)
    typer.echo(f"wrote {len(written)} images with {instances} text instances in {format} format to {out}")


@app.command()
def ingest(
    format: str = typer.Option(..., "--format", help=FORMAT_HELP + WORD_FORMAT_HELP),
    src: list[str] = typer.Option(
        ...,
        "--src",
        help="Source folder or s3://bucket/prefix in the dataset's native layout, or the official archive(s) "
        "(.zip/.tar/.tar.gz; repeat --src for an images + annotations pair). Archives are read in place.",
    ),
    dst: str = typer.Option(..., "--dst", help="Destination folder or s3://bucket/prefix for shards + manifest.json."),
    split: str = typer.Option(..., "--split", help="Split name recorded in every row (train, test, val, ...)."),
    dataset: str = typer.Option(None, "--dataset", help="Dataset name in row ids (default: the format name)."),
    rows_per_shard: int = typer.Option(256, "--rows-per-shard", min=1, help="Rows per Parquet shard."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when anything was quarantined."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON on stdout."),
    charset: int = typer.Option(
        94, "--charset", help="Word formats: label charset, 94 (training: case + punctuation), 62 or 36."
    ),
) -> None:
    """Validate a dataset and write unified Parquet shards plus DST/manifest.json (S3 endpoint: AWS_ENDPOINT_URL_S3)."""
    from pipelines.ingest import IngestError
    from pipelines.ingest import ingest as run_ingest

    log = (lambda msg: typer.echo(msg, err=True)) if json_out else typer.echo
    try:
        if format in ("lmdb", "icdar2015-words", "crops"):
            manifest = _ingest_words(format, src, dst, split, dataset, rows_per_shard, charset, log)
        else:
            manifest = run_ingest(format, src, dst, split, dataset=dataset, rows_per_shard=rows_per_shard, progress=log)
    except (IngestError, ValueError) as err:
        fail(str(err))
    if json_out:
        typer.echo(json.dumps(manifest, indent=2))
    quarantined = manifest["split_details"][split]["quarantined"]
    for q in quarantined:
        log(f"quarantined {q['source']}: {q['reason']}")
    for kind in ("filtered", "skipped"):  # word formats: labels dropped by preprocessing, unusable instances
        for reason, count in manifest["split_details"][split].get(kind, {}).items():
            log(f"{kind} {count}: {reason}")
    if strict and quarantined:
        fail(f"{len(quarantined)} item(s) quarantined and --strict is set")


def _ingest_words(fmt: str, src: list[str], dst: str, split: str, dataset, rows_per_shard: int, charset: int, log):
    """The word formats of `tcm ingest` (pipelines/words.py)."""
    from pipelines import words
    from tcm.recognition.charset import CHARSETS

    if charset not in CHARSETS:
        raise ValueError(f"--charset {charset}: expected one of {sorted(CHARSETS)}")
    if fmt != "icdar2015-words" and len(src) != 1:
        raise ValueError(f"--format {fmt} takes one --src (got {len(src)})")
    opts = {"split": split, "charset": CHARSETS[charset], "progress": log}
    match fmt:
        case "lmdb":
            return words.ingest_lmdb(src[0], dst, dataset=dataset, rows_per_shard=rows_per_shard, **opts)
        case "icdar2015-words":
            return words.ingest_words43(src, dst, dataset=dataset, rows_per_shard=rows_per_shard, **opts)
        case _:
            return words.build_crops(src[0], dst, **opts)


pipeline_app = typer.Typer(
    cls=LazyPipelineGroup,
    help="Workflows: the stages of a YAML run as one Ray job, resumable stage by stage.",
    no_args_is_help=True,
)
app.add_typer(pipeline_app, name="pipeline")


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())
