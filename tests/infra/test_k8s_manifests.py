"""Every KubeRay / MLflow manifest parses and carries the fields KubeRay requires."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _check_pod_template(template: dict, where: str) -> None:
    containers = template["spec"]["containers"]
    assert containers, f"{where}: no containers"
    for c in containers:
        assert c.get("name") and c.get("image"), f"{where}: container without name or image"
        limits = c.get("resources", {}).get("limits", {})
        assert "cpu" in limits and "memory" in limits, f"{where}: containers need cpu and memory limits"


def _check_cluster_spec(spec: dict, where: str) -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", spec["rayVersion"]), f"{where}: rayVersion"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict), f"{where}: headGroupSpec.rayStartParams must be a map"
    _check_pod_template(head["template"], f"{where}.headGroupSpec")
    names = set()
    for group in spec.get("workerGroupSpecs", []):
        name = group["groupName"]
        assert name not in names, f"{where}: duplicate worker group {name}"
        names.add(name)
        assert isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f"{where}.{name}: replicas"
        _check_pod_template(group["template"], f"{where}.{name}")


def _check_entrypoint(entrypoint: str, where: str) -> None:
    module = re.search(r"python -m ([\w.]+)", entrypoint)
    assert module, f"{where}: entrypoint should run a module of this repo"
    assert (REPO / (module.group(1).replace(".", "/") + ".py")).is_file(), f"{where}: {module.group(1)} missing"
    config = re.search(r"--config (\S+)", entrypoint)
    if config:
        assert (REPO / config.group(1)).is_file(), f"{where}: config {config.group(1)} missing"


def test_there_are_manifests_for_every_kuberay_kind():
    kinds = {d["kind"] for p in MANIFESTS for d in _docs(p)}
    assert {"RayCluster", "RayJob", "RayCronJob", "Deployment", "Service", "StatefulSet"} <= kinds
    assert (REPO / "infra" / "Dockerfile").is_file()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_fields(path):
    for doc in _docs(path):
        where = f"{path.name}:{doc['kind']}"
        assert doc.get("apiVersion") and doc.get("metadata"), where
        match doc["kind"]:
            case "RayCluster":
                assert doc["apiVersion"] == "ray.io/v1"
                _check_cluster_spec(doc["spec"], where)
            case "RayJob":
                assert doc["apiVersion"] == "ray.io/v1"
                _check_entrypoint(doc["spec"]["entrypoint"], where)
                yaml.safe_load(doc["spec"].get("runtimeEnvYAML", "{}"))  # must itself be YAML
                _check_cluster_spec(doc["spec"]["rayClusterSpec"], where)
            case "RayCronJob":
                assert doc["apiVersion"] == "ray.io/v1"
                spec = doc["spec"]
                assert len(spec["schedule"].split()) == 5, f"{where}: schedule must be a 5-field cron expression"
                assert spec.get("concurrencyPolicy") in {"Allow", "Forbid", "Replace"}
                job = spec["jobTemplate"]
                _check_entrypoint(job["entrypoint"], where)
                _check_cluster_spec(job["rayClusterSpec"], where)
            case "Deployment" | "StatefulSet":
                labels = doc["spec"]["selector"]["matchLabels"]
                assert doc["spec"]["template"]["metadata"]["labels"].items() >= labels.items(), where
                assert doc["spec"]["template"]["spec"]["containers"][0]["image"]
            case "Service":
                assert doc["spec"]["ports"] and doc["spec"]["selector"]
            case other:
                pytest.fail(f"{where}: unexpected kind {other}")


def test_mlflow_server_uses_postgres_and_s3_artifacts():
    deployment = next(d for d in _docs(K8S / "mlflow.yaml") if d["kind"] == "Deployment")
    command = " ".join(deployment["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "postgresql://" in command and "--artifacts-destination s3://" in command
