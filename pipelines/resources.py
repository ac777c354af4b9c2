"""Fail fast on resources that can never come.

Ray Train and Tune wait for a placement group for as long as it takes: on a cluster that has no GPU and no
autoscaler to add one, a run that asks for 8 GPU workers repeats "No available node types can fulfill resource
request" for ever. Before a training or a sweep starts, what it asks for (workers x {CPU, GPU} each) is compared
with what the cluster has (its alive nodes) plus what its autoscaler could add (the node groups of the cluster
config the autoscaler publishes in the GCS; none configured: nothing). Resources that are merely busy are not
checked: those come back.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from pipelines.config import ConfigError

UNLIMITED = sys.maxsize  # an autoscaler node group without a max_count


class Unschedulable(ConfigError):
    """The run asks for more than the cluster has or could ever get."""


@dataclass(frozen=True)
class Ask:
    what: str  # e.g. "training 'ic15-db'"
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    extra_cpus: float = 0.0  # outside the workers: a sweep trial's driver


@dataclass(frozen=True)
class NodeShape:
    cpus: float
    gpus: float
    count: int = 1  # nodes of this shape: 1 for an alive node, max_count for an autoscaler node group
    scalable: bool = False  # an autoscaler node group (may not exist yet)


def _per_node(cpus: float, gpus: float, ask: Ask) -> int:
    """Workers one node of this shape holds."""
    fits = [math.floor(cpus / ask.cpus_per_worker + 1e-9) if ask.cpus_per_worker > 0 else UNLIMITED]
    if ask.gpus_per_worker > 0:
        fits.append(math.floor(gpus / ask.gpus_per_worker + 1e-9))
    return max(0, min(fits))


def _total(nodes: Sequence[NodeShape], attr: str) -> float:
    return sum(getattr(n, attr) * n.count for n in nodes)


def _fmt(x: float) -> str:
    return "unlimited" if x >= UNLIMITED else f"{x:g}"


def shortfall(ask: Ask, nodes: Sequence[NodeShape]) -> str | None:
    """None when `ask` can be placed on `nodes` (each worker whole on one node), else the one-line reason."""
    placeable = sum(min(_per_node(n.cpus, n.gpus, ask) * n.count, UNLIMITED) for n in nodes)
    cpus, gpus = _total(nodes, "cpus"), _total(nodes, "gpus")
    need_cpus = ask.workers * ask.cpus_per_worker + ask.extra_cpus
    need_gpus = ask.workers * ask.gpus_per_worker
    if placeable >= ask.workers and cpus >= need_cpus and gpus >= need_gpus:
        return None
    alive = [n for n in nodes if not n.scalable]
    groups = [n for n in nodes if n.scalable]
    has = f"the cluster has {len(alive)} node(s) with {_fmt(_total(alive, 'cpus'))} CPU, {_fmt(_total(alive, 'gpus'))} GPU"
    could = (
        f"; its autoscaler could add up to {_fmt(_total(groups, 'cpus'))} CPU, {_fmt(_total(groups, 'gpus'))} GPU"
        if groups
        else " and no autoscaler to add more"
    )
    return (
        f"{ask.what} can never start: it asks for {ask.workers} worker(s) x {{CPU: {ask.cpus_per_worker:g}, "
        f"GPU: {ask.gpus_per_worker:g}}} ({need_cpus:g} CPU, {need_gpus:g} GPU in all, at most {placeable} worker(s) "
        f"fit); {has}{could}"
    )


def cluster_nodes() -> list[NodeShape]:
    """The connected cluster's alive nodes, plus the node groups its autoscaler may start (none: not included)."""
    import ray

    nodes = [
        NodeShape(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
        for n in ray.nodes()
        if n.get("Alive")
    ]
    return nodes + autoscaler_groups()


def autoscaler_groups() -> list[NodeShape]:
    """Node groups of the autoscaler's cluster config (KubeRay / cluster launcher publish it in the GCS; Ray
    Train's own pre-start check reads the same record). No config: no autoscaler, nothing can be added."""
    from ray._private.state import state  # private, but the only reader of the autoscaler's published config

    try:
        config = state.get_cluster_config()
    except Exception:  # an older GCS without the record behaves as "no autoscaler"
        return []
    if config is None:
        return []
    return [
        NodeShape(
            float(g.resources.get("CPU", 0)),
            float(g.resources.get("GPU", 0)),
            UNLIMITED if g.max_count < 0 else int(g.max_count),
            scalable=True,
        )
        for g in config.node_group_configs
        if g.max_count != 0
    ]


def require(ask: Ask) -> None:
    """Raise Unschedulable (one line: what was asked, what exists) when the connected cluster can never hold `ask`."""
    reason = shortfall(ask, cluster_nodes())
    if reason:
        raise Unschedulable(reason)


def training_ask(cfg, what: str | None = None, extra_cpus: float = 0.0) -> Ask:
    """What the TorchTrainer of `cfg` (an ExperimentConfig) asks for: build_trainer's ScalingConfig."""
    t = cfg.train
    return Ask(what or f"training {cfg.name!r}", t.num_workers, t.cpus_per_worker, 1.0 if t.use_gpu else 0.0, extra_cpus)
