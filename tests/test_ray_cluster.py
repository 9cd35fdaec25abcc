"""A real two-node Ray cluster on localhost, and a sweep cell attached to it through RAY_ADDRESS.

Two `ray start --block` processes (a head and a worker node, one CPU each, own
ports) form the cluster; the sweep's worker joins it as a driver. With
client-cpus 1 each node fits exactly one client actor, so the record must show
replies from both Ray nodes (two node ids, two actor processes). Everything is
stopped by the PIDs this test started (`ray stop` would kill by name); the test
then checks that no process of the cluster's temp dir is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from fedalign.deploy.localhost import free_port, port_open

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).with_name("ray")
if not RAY.exists():
    RAY = Path(shutil.which("ray") or "/nonexistent/ray")

SPEC = {
    "name": "cluster", "dataset": "digits", "model": "mlp", "model-args": {"width": 16, "depth": 1},
    "alphas": [0.5], "strategies": ["fedavg"], "seeds": [0], "rounds": 2, "clients": 4, "client-cpus": 1.0,
}  # fmt: skip


def _node_args(temp: Path) -> list[str]:
    low = free_port()
    return [
        "--num-cpus=1", "--block", "--disable-usage-stats", f"--temp-dir={temp}",
        f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
        f"--min-worker-port={low}", f"--max-worker-port={low + 40}",
    ]  # fmt: skip


def _processes_under(temp: Path) -> list[int]:
    """PIDs whose command line names the cluster's temp dir (raylet, GCS, workers, agents)."""
    needle = str(temp).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _alive_nodes(address: str, env: dict) -> list[str]:
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(json.dumps(sorted(n['NodeID'] for n in ray.nodes() if n['Alive'])))") % address  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cluster():
    if not RAY.exists():
        pytest.skip("the `ray` CLI is not installed")
    temp = Path(tempfile.mkdtemp(prefix="fr", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    logs = [open(temp / "head.log", "wb"), open(temp / "node2.log", "wb")]
    procs = []
    try:
        procs.append(subprocess.Popen(
            [str(RAY), "start", "--head", f"--port={port}",
             "--include-dashboard=false", f"--ray-client-server-port={free_port()}", *_node_args(temp)],
            stdout=logs[0], stderr=subprocess.STDOUT, env=env, start_new_session=True))  # fmt: skip
        deadline = time.monotonic() + 180
        while not port_open(port) and time.monotonic() < deadline:
            assert procs[0].poll() is None, (temp / "head.log").read_text()[-2000:]
            time.sleep(1)
        procs.append(subprocess.Popen(
            [str(RAY), "start", f"--address={address}", *_node_args(temp)],
            stdout=logs[1], stderr=subprocess.STDOUT, env=env, start_new_session=True))  # fmt: skip
        nodes: list[str] = []
        while len(nodes) < 2 and time.monotonic() < deadline + 120:
            for p, log in zip(procs, ("head.log", "node2.log")):
                assert p.poll() is None, (temp / log).read_text()[-2000:]
            nodes = _alive_nodes(address, env)
            if len(nodes) < 2:
                time.sleep(2)
        assert len(nodes) == 2, nodes
        yield {"address": address, "nodes": nodes, "temp": temp, "env": env}
    finally:
        for p in reversed(procs):  # `ray start --block` stops its node's processes on SIGTERM
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
        deadline = time.monotonic() + 30
        while _processes_under(temp) and time.monotonic() < deadline:
            time.sleep(1)
        left = _processes_under(temp)
        for pid in left:  # started by this test's cluster: stop them by PID
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"processes of the test cluster outlived it: {left}"


def test_sweep_cell_runs_clients_on_both_ray_nodes(cluster, tmp_path):
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(SPEC))
    env = {**cluster["env"], "RAY_ADDRESS": cluster["address"], "FLWR_HOME": str(tmp_path / "flwr")}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fedalign", "sweep", str(tmp_path / "cluster.yaml"), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "cells" / "alpha0.5__fedavg__seed0" / "record.json").read_text())
    placement = record["placement"]
    assert placement["ray_nodes"] == cluster["nodes"]  # every client reply came from a node of this cluster, both used
    processes = placement["processes"]
    assert len({p["pid"] for p in processes}) == 2 and sum(p["replies"] for p in processes) == 2 * 4
    assert set().union(*(p["partitions"] for p in processes)) == {0, 1, 2, 3}
    assert [r["round"] for r in record["rounds"]] == [0, 1, 2]
