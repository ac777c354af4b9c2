"""What the local stack exposes: the dashboard / job server, MLflow and the S3 endpoint listen on loopback only.

Ray's internal gRPC ports (GCS, raylets, object managers, agents) are not checked here: Ray 2.60 binds them on
every interface whatever `--node-ip-address` says; token auth guards them (README, "Security defaults").
"""

from __future__ import annotations

from urllib.parse import urlparse

import psutil


def _listening(port: int) -> set[str]:
    """The local addresses a TCP socket is listening on at `port` (every process of the machine)."""
    return {c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def test_public_services_bind_to_loopback_only(stack):
    services = {
        "Ray dashboard / job server": stack.dashboard,
        "MLflow server": stack.state["mlflow_uri"],
        "S3 endpoint": stack.state["s3_endpoint"],
    }
    for name, url in services.items():
        addresses = _listening(urlparse(url).port)
        assert addresses, f"{name}: nothing listens on {url}"
        assert addresses == {"127.0.0.1"}, f"{name} ({url}) listens on {sorted(addresses)}, not loopback only"
