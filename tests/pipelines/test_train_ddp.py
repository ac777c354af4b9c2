"""DDP on Ray Train: two gloo workers really average their gradients.

The workers run the real worker code (`_setup_worker`: model, optimiser, `prepare_model`'s DDP wrapper;
`_train_epoch`: forward, loss, backward, step) on batches this test hands them, so both layouts see exactly the
same rows: step s of the two-worker run gives rank r rows [4s + 2r, 4s + 2r + 2) and the one-worker references
rows [4s, 4s + 4). Ray Data's streaming split decides which rows reach which worker, so it cannot be used to line
the two layouts up; it is covered by tests/pipelines/test_train.py.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch

from pipelines.config import ExperimentConfig, load_config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "jobs" / "configs" / "tiny_cpu.yaml"
STEPS = 3  # optimiser steps of each layout
B = 4  # global batch: 2 per worker in the DDP run
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the Ray workers need this module's loop and shard


class _Shard:
    """Stands in for a worker's Ray Data shard: given rows of every step, as `_train_epoch` iterates them."""

    def __init__(self, arrays: dict[str, np.ndarray], steps: list[list[int]]):
        self.arrays, self.steps = arrays, steps

    def iter_torch_batches(self, *, collate_fn, device, **_kwargs):
        for rows in self.steps:
            yield {k: v.to(device) for k, v in collate_fn({k: a[rows] for k, a in self.arrays.items()}).items()}


def _rows(rank: int, world: int) -> list[list[int]]:
    """Rows of each step for `rank` of `world` workers: the global batch of step s is rows [B s, B s + B)."""
    b = B // world
    return [list(range(B * s + rank * b, B * s + (rank + 1) * b)) for s in range(STEPS)]


def _ddp_loop(config: dict) -> None:
    """Ray Train worker: the pipeline's setup and epoch on this rank's rows; its weights written to a file."""
    from pipelines import train

    w = train._setup_worker(config)
    w.logger = None  # nothing to log: the MLflow run only satisfies the setup
    train._train_epoch(w, _Shard(config["arrays"], _rows(w.rank, w.world)))
    torch.save(w.model.state_dict(), Path(config["out"]) / f"rank{w.rank}.pt")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_local):
    """The config (plain SGD, no dropout: nothing random between the layouts) and 12 encoded rows."""
    import pyarrow.parquet as pq

    from pipelines.augment import encode_batch
    from pipelines.ingest import ingest
    from tcm.build import build_codec
    from tcm.data.synth import write_dataset

    root = tmp_path_factory.mktemp("ddp")
    write_dataset("icdar2015", root / "src", n=B * STEPS, seed=5, split="train", height=128, width=128)
    ingest("icdar2015", str(root / "src"), str(root / "data"), "train", progress=lambda _msg: None)
    cfg = load_config(
        TINY,
        [
            "name=ddp",
            f"train.storage_path={root / 'runs'}",
            f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            "optim.kind=sgd",
            "optim.momentum=0.0",
            "optim.lr=0.01",
            "optim.grad_clip=null",
            "model.tcm.decoder_dropout=0.0",  # ranks and references draw no random masks
        ],
    )
    table = pq.read_table(sorted((root / "data").rglob("*.parquet")))
    det = cfg.detector()
    arrays = encode_batch(table.sort_by("id"), codec=build_codec(det.head), model_cfg=det, aug_cfg=cfg.data.augment,
                          seed=0, epoch=0)  # fmt: skip
    return cfg, arrays, root


def _fresh(cfg: ExperimentConfig):
    """The model and optimiser a worker builds (`_setup_worker`: seed, then the detector, then the optimiser)."""
    from pipelines.train import make_optimizer
    from tcm.build import build_detector

    torch.manual_seed(cfg.train.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no CLIP weights offline
        model = build_detector(cfg.detector(), pretrained=True)
    return model, make_optimizer(model, cfg)


def _one_worker(cfg: ExperimentConfig, arrays: dict[str, np.ndarray], steps: list[list[int]]) -> dict:
    """The pipeline's `_train_epoch` in this process, one worker: batch = the rows of each step."""
    from pipelines.tasks import task_for
    from pipelines.train import _State, _train_epoch, _Worker

    model, optimizer = _fresh(cfg)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    task = task_for(cfg.tcm_config())
    w = _Worker(cfg, {}, 0, 1, torch.device("cpu"), model, model, optimizer, scaler, None, None, None, _State(), task)
    _train_epoch(w, _Shard(arrays, steps))
    return model.state_dict()


def _averaged(cfg: ExperimentConfig, arrays: dict[str, np.ndarray]) -> dict:
    """What DDP computes, by hand: each step, the mean of the two halves' gradients, each half's forward on its
    own (BatchNorm statistics and the batch-level OHEM / Dice of each half), then one optimiser step."""
    model, optimizer = _fresh(cfg)
    model.train()
    halves = list(zip(_rows(0, 2), _rows(1, 2), strict=True))
    for rows_a, rows_b in halves:
        optimizer.zero_grad(set_to_none=True)
        for rows in (rows_a, rows_b):
            batch = {k: torch.from_numpy(a[rows]) for k, a in arrays.items()}
            x = batch.pop("image")
            loss = model.loss({k: v.float() for k, v in model(x).items()}, batch)["loss"]
            (loss / 2).backward()
        optimizer.step()
    return model.state_dict()


def _params(cfg: ExperimentConfig) -> list[str]:
    """The trained parameters' names. Buffers are left out: BatchNorm's running statistics are each rank's own
    (DDP broadcasts rank 0's before every forward, so after the last one they hold that rank's batch)."""
    return [name for name, _ in _fresh(cfg)[0].named_parameters()]


def _gap(a: dict, b: dict, keys: list[str]) -> float:
    """Largest |difference| over the parameters."""
    return max(float((a[k] - b[k]).abs().max()) for k in keys)


def _rel(a: dict, b: dict, start: dict, keys: list[str]) -> float:
    """‖a − b‖ / ‖b − start‖ over the parameters: a gap measured against how far training moved."""
    num = sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in keys)
    den = sum(float((b[k].float() - start[k].float()).pow(2).sum()) for k in keys)
    return (num / den) ** 0.5


@pytest.mark.slow
@pytest.mark.integration
def test_two_gloo_workers_step_on_the_average_of_their_gradients(setup):
    """Two workers x batch 2 on the same rows as the references below, 3 SGD steps (lr 0.01).

    - The two ranks end bit-identical (one averaged gradient applied on both).
    - Their weights equal, bit for bit, the hand-computed average of the two halves' gradients (each half's own
      forward). Tolerance 0: the references run one thread like the workers, so every float operation repeats;
      DDP's division by the world size (2) is exact and a sum of two terms does not depend on their order.
    - Rank 0's rows stepped on alone (no averaging) land 130 % of the distance trained away: a broken all-reduce
      cannot pass.
    One worker with the whole batch of 4 is NOT the reference: BatchNorm statistics and the DB loss's OHEM and
    Dice are taken per worker batch (that is what DDP without SyncBatchNorm computes), and at 2 images a batch
    this moves the weights ~100 % of the distance trained (measured 103 %), so no tolerance could separate it
    from a broken reduction; `_one_worker` measures it and the test prints it.
    """
    import mlflow
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg, arrays, root = setup
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    run_id = client.create_run(client.create_experiment("ddp")).info.run_id
    out = root / "weights"
    out.mkdir()
    trainer = TorchTrainer(
        _ddp_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "tracking_uri": cfg.mlflow.tracking_uri,
                           "mlflow_run_id": run_id, "data_tags": {}, "arrays": arrays, "out": str(out)},  # fmt: skip
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name="ddp", storage_path=str(root / "runs")),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit()
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers run (`_setup_worker`): the same float operations in the same order
    try:
        start, keys = _fresh(cfg)[0].state_dict(), _params(cfg)
        averaged = _averaged(cfg, arrays)
        whole = _one_worker(cfg, arrays, _rows(0, 1))
        alone = _one_worker(cfg, arrays, _rows(0, 2))  # rank 0's rows without the other rank's gradients
    finally:
        torch.set_num_threads(threads)
    gaps = {
        "ranks": _gap(rank0, rank1, keys),
        "averaged": _gap(rank0, averaged, keys),
        "averaged_rel": _rel(rank0, averaged, start, keys),
        "whole": _rel(rank0, whole, start, keys),
        "alone": _rel(alone, averaged, start, keys),
    }
    print(gaps)
    assert gaps["ranks"] == 0.0, gaps
    assert gaps["averaged"] == 0.0, gaps
    assert gaps["alone"] > 0.5, gaps  # the rows and steps make unaveraged gradients visible
