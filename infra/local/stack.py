"""A real local stack on loopback: a Ray head + two worker nodes, an S3 endpoint (moto), an MLflow server.

    python -m infra.local.stack up      # start (safe to run twice: a running stack is reported, not restarted)
    python -m infra.local.stack down    # save the buckets, stop every process it started, by process group
    python -m infra.local.stack down --wipe   # the same, then forget the buckets AND the MLflow store together
    python -m infra.local.stack status  # print the addresses, exit 1 when the stack is not up
    python -m infra.local.stack put DIR s3://bucket/prefix   # upload a folder (no AWS CLI needed)

Each service runs in its own process session (so `down` can stop it and everything it spawned), binds to
127.0.0.1, and is awaited until it answers. `STATE/env.sh` holds the variables a shell or a test needs
(RAY_ADDRESS, RAY_API_SERVER_ADDRESS, MLFLOW_TRACKING_URI, AWS_*, and the project's `.venv/bin` first on PATH).
The S3 keys are moto's throwaway test keys: this stack is for a laptop or CI, never for data that matters.

One lifetime for the stack's state: the MLflow store (`STATE/mlflow.db`) and the buckets (moto keeps objects in
memory only, so `down` saves them to `STATE/s3/` and `up` puts them back) survive `down` + `up` together, and
`down --wipe` forgets both together: the registry never lists a model whose files are gone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"  # loopback only: nothing here is meant to be reachable from another machine
DEFAULT_STATE = Path(__file__).resolve().parent / ".state"
SNAPSHOT = "s3"  # STATE/s3/<bucket>/<key>: the buckets between a `down` and the next `up`
BUCKETS = ("tcm-data", "tcm-runs", "mlflow-artifacts")  # raw data + shards, checkpoints, MLflow artifacts
FAKE_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
WORKERS = ({"name": "worker-1", "cpus": 2}, {"name": "worker-2", "cpus": 2})  # logical CPUs: 2-core CI machine
HEAD_CPUS = 1  # the head runs job drivers and the Train controller; training workers land on the worker nodes


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


_CHILDREN: dict[int, subprocess.Popen] = {}  # processes started by this process: poll() sees their exit


def _alive(pid: int) -> bool:
    if pid in _CHILDREN:
        return _CHILDREN[pid].poll() is None  # a child that exited stays a zombie until polled
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _wait(what: str, check, timeout: float, pid: int, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not _alive(pid):
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} exited during start-up; last log lines:\n{tail}")
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer within {timeout:.0f} s (log: {log})")


def ray_auth_headers() -> dict[str, str]:
    """Ray >= 2.59 turns token auth on for local clusters: its HTTP API wants the token as a bearer."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not token and path.exists():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _ray_temp_dir(state_dir: Path) -> str | None:
    """Ray's session files under the state dir, so nothing (sockets, logs, the `ray_current_cluster` marker a bare
    ray.init() would join) is shared with other Ray clusters on the machine. Unix socket paths are limited to
    107 bytes and Ray appends ~60 (session_<date>_<pid>/sockets/plasma_store): a deep state dir keeps Ray's default."""
    path = state_dir.resolve() / "ray"
    return str(path) if len(str(path)) <= 45 else None


def _ray_node_args(ports: dict[str, int], temp_dir: str | None = None) -> list[str]:
    """Distinct per-node ports: several raylets share one IP here, so nothing may fall back to a fixed default."""
    return [
        *([f"--temp-dir={temp_dir}"] if temp_dir else []),
        f"--node-ip-address={HOST}",
        f"--dashboard-agent-listen-port={ports['agent_http']}",
        f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
        f"--runtime-env-agent-port={ports['runtime_env']}",
        f"--metrics-export-port={ports['metrics']}",
        f"--min-worker-port={ports['worker_min']}",
        f"--max-worker-port={ports['worker_min'] + 199}",
        "--disable-usage-stats",
        "--block",
    ]


def _node_ports(index: int) -> dict[str, int]:
    return {
        "agent_http": free_port(),
        "agent_grpc": free_port(),
        "runtime_env": free_port(),
        "metrics": free_port(),
        "worker_min": 20000 + 300 * index,  # disjoint worker port ranges per node
    }


def read_state(state_dir: Path) -> dict | None:
    path = state_dir / "stack.json"
    return json.loads(path.read_text()) if path.exists() else None


def is_up(state: dict | None) -> bool:
    return bool(state) and all(_alive(p["pid"]) for p in state["processes"]) and _http_ok(state["mlflow_uri"] + "/health")


def env_of(state: dict) -> dict[str, str]:
    return {
        "RAY_ADDRESS": state["ray_address"],
        "RAY_API_SERVER_ADDRESS": state["dashboard_url"],
        "MLFLOW_TRACKING_URI": state["mlflow_uri"],
        "AWS_ENDPOINT_URL_S3": state["s3_endpoint"],
        "RAY_AUTH_MODE": "token",
        **FAKE_KEYS,
    }


def up(state_dir: Path = DEFAULT_STATE) -> dict:
    state = read_state(state_dir)
    if is_up(state):
        print("stack already up")
        _print(state)
        return state
    if state:
        down(state_dir, quiet=True)  # a half-dead stack from before: clear it first
    state_dir.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    # token auth on every node and client (Ray 2.60 turns it on for a head, but a joining node defaults to off);
    # this interpreter's bin first on PATH: a job's entrypoint `python -m jobs.…` must find the project's Python
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    env = {**os.environ, **FAKE_KEYS, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "PATH": path}
    state = {"processes": [], "state_dir": str(state_dir), "ray_temp_dir": _ray_temp_dir(state_dir)}

    def record(name: str, pid: int) -> None:
        state["processes"] = [p for p in state["processes"] if p["name"] != name] + [{"name": name, "pid": pid}]
        (state_dir / "stack.json").write_text(json.dumps(state, indent=2))  # written as we go: down always works

    try:
        s3_port = free_port()
        pid = _spawn([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(s3_port)], logs / "s3.log", env)
        record("s3", pid)
        state["s3_endpoint"] = f"http://{HOST}:{s3_port}"
        _wait("S3 endpoint (moto)", lambda: _port_open(s3_port), 60, pid, logs / "s3.log")
        _create_buckets(state["s3_endpoint"])
        restored = _restore_buckets(state["s3_endpoint"], state_dir / SNAPSHOT)
        state["s3_restored"] = True  # from here on, `down` may replace the snapshot with what the server holds
        record("s3", pid)
        if restored:
            print(f"S3: {restored} object(s) restored from {state_dir / SNAPSHOT}")

        gcs_port, dash_port, client_port, ml_port = free_port(), free_port(), free_port(), free_port()
        head = [_bin("ray"), "start", "--head", f"--port={gcs_port}", f"--dashboard-host={HOST}",
                f"--dashboard-port={dash_port}", f"--ray-client-server-port={client_port}", f"--num-cpus={HEAD_CPUS}",
                '--resources={"stack_head": 1}', *_ray_node_args(_node_ports(0), state["ray_temp_dir"])]  # fmt: skip
        state["ray_address"] = f"{HOST}:{gcs_port}"
        state["dashboard_url"] = f"http://{HOST}:{dash_port}"
        # every process of the cluster (drivers, Ray Train's own helpers) finds this cluster, not "auto": with
        # another Ray on the machine a bare lookup fails with "Found multiple active Ray instances"; and the
        # cluster's env names the stack's S3 and MLflow, as a real cluster's does (infra/k8s), so a plain
        # `ray job submit -- python -m jobs.train …` needs no runtime env
        ray_env = {**env, "RAY_ADDRESS": state["ray_address"], "RAY_API_SERVER_ADDRESS": state["dashboard_url"],
                   "AWS_ENDPOINT_URL_S3": state["s3_endpoint"], "MLFLOW_TRACKING_URI": f"http://{HOST}:{ml_port}"}  # fmt: skip
        pid = _spawn(head, logs / "ray-head.log", ray_env)
        record("ray-head", pid)
        _wait("Ray head", lambda: _http_ok(state["dashboard_url"] + "/api/version", ray_auth_headers()), 120, pid, logs / "ray-head.log")
        # one node at a time, each retried: `ray start` gives a raylet a fixed 30 s to register, which a loaded
        # 2-core machine can miss (it then exits with "The current node timed out during startup")
        for i, worker in enumerate(WORKERS, start=1):
            name = f"ray-{worker['name']}"
            for attempt in range(1, 4):
                args = [_bin("ray"), "start", f"--address={state['ray_address']}", f"--num-cpus={worker['cpus']}",
                        f'--resources={{"{worker["name"]}": 1}}', *_ray_node_args(_node_ports(i), state["ray_temp_dir"])]  # fmt: skip
                pid = _spawn(args, logs / f"{name}.log", ray_env)
                record(name, pid)
                try:
                    _wait_nodes(state, 1 + i, 120)
                    break
                except RuntimeError:
                    if _alive(pid) or attempt == 3:
                        raise
                    _stop_group(pid)  # whatever that attempt left
                    print(f"{name} did not register in time (attempt {attempt}); starting it again", file=sys.stderr)

        ml_env = {**env, "MLFLOW_S3_ENDPOINT_URL": state["s3_endpoint"]}
        ml = [_bin("mlflow"), "server", "--backend-store-uri", f"sqlite:///{state_dir / 'mlflow.db'}",
              "--artifacts-destination", "s3://mlflow-artifacts", "--host", HOST, "--port", str(ml_port), "--workers", "1"]  # fmt: skip
        pid = _spawn(ml, logs / "mlflow.log", ml_env)
        record("mlflow", pid)
        state["mlflow_uri"] = f"http://{HOST}:{ml_port}"
        _wait("MLflow server", lambda: _http_ok(state["mlflow_uri"] + "/health"), 120, pid, logs / "mlflow.log")
    except Exception:
        down(state_dir, quiet=True)
        raise
    (state_dir / "stack.json").write_text(json.dumps(state, indent=2))
    # the project's tools (`tcm`, `ray`, `mlflow`) first on PATH, as `source .venv/bin/activate` would put them
    venv_bin = f"export PATH={Path(sys.executable).parent}:$PATH\n"
    (state_dir / "env.sh").write_text(venv_bin + "".join(f"export {k}={v}\n" for k, v in env_of(state).items()))
    _print(state)
    return state


def _s3(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name=FAKE_KEYS["AWS_DEFAULT_REGION"],
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2}))  # fmt: skip


def _create_buckets(endpoint: str) -> None:
    s3 = _s3(endpoint)
    for bucket in BUCKETS:
        try:
            s3.create_bucket(Bucket=bucket)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass


def _save_buckets(endpoint: str, snapshot: Path) -> int:
    """Every object of the stack's buckets into `snapshot/<bucket>/<key>`: written beside, then swapped in, so a
    failed save leaves the previous snapshot whole. Returns the number of objects."""
    s3 = _s3(endpoint)
    tmp = snapshot.with_name(snapshot.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    count = 0
    for bucket in BUCKETS:
        (tmp / bucket).mkdir(parents=True, exist_ok=True)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):  # a folder marker (pyarrow writes them): prefixes need no object
                    continue
                dst = tmp / bucket / obj["Key"]
                dst.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, obj["Key"], str(dst))
                count += 1
    old = snapshot.with_name(snapshot.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if snapshot.exists():
        snapshot.rename(old)
    tmp.rename(snapshot)
    shutil.rmtree(old, ignore_errors=True)
    return count


def _restore_buckets(endpoint: str, snapshot: Path) -> int:
    """Upload a snapshot written by _save_buckets (none: nothing to do). Returns the number of objects."""
    if not snapshot.is_dir():
        return 0
    s3, count = _s3(endpoint), 0
    for bucket in BUCKETS:
        root = snapshot / bucket
        for path in sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []:
            s3.upload_file(str(path), bucket, path.relative_to(root).as_posix())
            count += 1
    return count


def wipe(state_dir: Path) -> None:
    """Forget the stack's data: the bucket snapshot and the MLflow store, together (the stack must be down)."""
    for name in (SNAPSHOT, SNAPSHOT + ".partial", SNAPSHOT + ".old"):
        shutil.rmtree(state_dir / name, ignore_errors=True)
    (state_dir / "mlflow.db").unlink(missing_ok=True)


def put(src: Path, dst: str) -> int:
    """Upload every file under `src` to `dst` (s3://bucket/prefix) on the stack's endpoint (env.sh sourced)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3")
    if not endpoint or not dst.startswith("s3://"):
        raise SystemExit("put: needs AWS_ENDPOINT_URL_S3 (source the stack's env.sh) and an s3:// destination")
    if not src.is_dir():
        raise SystemExit(f"put: {src} is not a folder")
    bucket, _, prefix = dst.removeprefix("s3://").partition("/")
    s3, count = _s3(endpoint), 0
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, "/".join(x for x in (prefix.strip("/"), path.relative_to(src).as_posix()) if x))
        count += 1
    print(f"uploaded {count} file(s) from {src} to {dst}")
    return count


def _wait_nodes(state: dict, expected: int, timeout: float) -> None:
    """Poll `ray status`-equivalent through the dashboard until every node has registered."""
    deadline = time.monotonic() + timeout
    url = state["dashboard_url"] + "/nodes?view=summary"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=ray_auth_headers()), timeout=3) as resp:
                summary = json.loads(resp.read())["data"]["summary"]
            alive = [n for n in summary if n.get("raylet", {}).get("state") == "ALIVE"]
            if len(alive) >= expected:
                return
        except (OSError, KeyError, ValueError):
            pass
        dead = [p["name"] for p in state["processes"] if not _alive(p["pid"])]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited during start-up (logs in {state['state_dir']}/logs)")
        time.sleep(1)
    raise RuntimeError(f"only some of the {expected} Ray nodes registered within {timeout:.0f} s")


def down(state_dir: Path = DEFAULT_STATE, quiet: bool = False, wipe_data: bool = False) -> None:
    state = read_state(state_dir)
    if not state:
        if not quiet:
            print("stack is not up")
        if wipe_data:
            wipe(state_dir)
            print(f"wiped the buckets and the MLflow store in {state_dir}")
        return
    s3 = next((p for p in state["processes"] if p["name"] == "s3"), None)
    if not wipe_data and state.get("s3_restored") and s3 and _alive(s3["pid"]):
        try:  # before anything stops: the MLflow store and the buckets must keep one lifetime
            saved = _save_buckets(state["s3_endpoint"], state_dir / SNAPSHOT)
            if not quiet:
                print(f"S3: {saved} object(s) saved to {state_dir / SNAPSHOT}")
        except Exception as err:  # the previous snapshot stays whole
            print(f"warning: could not save the buckets ({err}); {state_dir / SNAPSHOT} keeps the last save", file=sys.stderr)
    for proc in reversed(state["processes"]):  # mlflow, workers, head, s3
        _stop_group(proc["pid"])
        if not quiet:
            print(f"stopped {proc['name']} (pid {proc['pid']})")
    _forget_current_cluster(state.get("ray_address", ""))
    for name in ("stack.json", "env.sh"):  # logs stay for a post-mortem; the next `up` appends to them
        (state_dir / name).unlink(missing_ok=True)
    if wipe_data:
        wipe(state_dir)
        if not quiet:
            print(f"wiped the buckets and the MLflow store in {state_dir}")


def _forget_current_cluster(address: str) -> None:
    """`ray start` records the head in /tmp/ray/ray_current_cluster and a bare ray.init() would try to join it."""
    marker = Path("/tmp/ray/ray_current_cluster")
    port = address.rsplit(":", 1)[-1]
    if port and marker.exists() and marker.read_text().strip().endswith(f":{port}"):
        marker.unlink(missing_ok=True)


def _stop_group(pid: int, grace: float = 15.0) -> None:
    """SIGTERM the process group (the service and everything it spawned), then SIGKILL what is left."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.3)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _print(state: dict) -> None:
    print(f"Ray:        {state['ray_address']}  (dashboard + jobs: {state['dashboard_url']})")
    print(f"S3:         {state['s3_endpoint']}  buckets: {', '.join(BUCKETS)}")
    print(f"MLflow:     {state['mlflow_uri']}")
    print(f"env:        source {state['state_dir']}/env.sh")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status", "put"])
    parser.add_argument("paths", nargs="*", help="with put: a local folder and an s3:// destination")
    parser.add_argument("--wipe", action="store_true",
                        help="with down: also forget the buckets and the MLflow store (both, never one)")  # fmt: skip
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("TCM_STACK_DIR", DEFAULT_STATE)),
                        help="where pids, logs, the MLflow db and env.sh live (default: infra/local/.state)")  # fmt: skip
    args = parser.parse_args(argv)
    match args.action:
        case "up":
            up(args.state_dir)
        case "down":
            down(args.state_dir, wipe_data=args.wipe)
        case "put":
            if len(args.paths) != 2:
                parser.error("put takes a local folder and an s3:// destination")
            put(Path(args.paths[0]), args.paths[1])
        case "status":
            state = read_state(args.state_dir)
            if not is_up(state):
                print("stack is not up")
                return 1
            _print(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
