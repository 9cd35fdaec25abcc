"""Compact transport in real runs: Flower's Simulation Runtime (Ray) and a localhost deployment.

* compact and full transport give bit-identical global models, every round,
  for FedPFN and FedPNU (same seed), and metrics.json/csv carry the bytes;
* a real SuperLink with 3 SuperNodes (3 rounds) counts the same bytes per
  node and round as the simulation of the same run config.
"""

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from fedalign.deploy.localhost import LocalDeployment, default_run_config, free_port
from fedalign.simulation import simulate

pytestmark = pytest.mark.slow
ROUNDS, NODES = 3, 3


def run_config(out: Path, strategy: str, transport: str) -> dict:
    return {
        "strategy": strategy, "transport": transport, "num-rounds": ROUNDS, "min-nodes": NODES,
        "train-size": 300, "test-size": 100, "client-test-eval": False, "save-round-models": True,
        "output-dir": str(out),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """FedPFN and FedPNU, compact and full, 3 nodes x 3 rounds in the Ray engine."""
    home = tmp_path_factory.mktemp("flwr_home")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLWR_HOME", str(home))
        mp.setenv("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", str(free_port()))
        mp.setenv("FLWR_LOCAL_CONTROL_API_PORT", str(free_port()))
        for strategy in ("fedpfn", "fedpnu"):
            for transport in ("compact", "full"):
                path = tmp_path_factory.mktemp(f"{strategy}-{transport}")
                record = simulate(run_config(path, strategy, transport), num_supernodes=NODES)
                out[strategy, transport] = (path, record)
    return out


def per_node_bytes(record: dict, direction: str) -> dict[int, list[int]]:
    """round -> sorted per-node byte counts (node ids differ between runs)."""
    return {row["round"]: sorted(row[direction].values()) for row in record["wire"]["rounds"]}


@pytest.mark.parametrize("strategy", ["fedpfn", "fedpnu"])
def test_compact_and_full_runs_are_bit_identical(runs, strategy):
    compact_dir, _ = runs[strategy, "compact"]
    full_dir, _ = runs[strategy, "full"]
    for name in ["initial_model.pt"] + [f"round_{r}.pt" for r in range(1, ROUNDS + 1)] + ["final_model.pt"]:
        a = torch.load(compact_dir / name, weights_only=True)
        b = torch.load(full_dir / name, weights_only=True)
        for key in a:
            assert a[key].numpy().tobytes() == b[key].numpy().tobytes(), (name, key)
    assert not torch.equal(  # it trained
        torch.load(compact_dir / "final_model.pt", weights_only=True)["classifier.weight"],
        torch.load(compact_dir / "initial_model.pt", weights_only=True)["classifier.weight"],
    )


@pytest.mark.parametrize("strategy", ["fedpfn", "fedpnu"])
def test_run_records_bytes_per_round_and_node(runs, strategy):
    path, compact = runs[strategy, "compact"]
    _, full = runs[strategy, "full"]
    model_bytes = per_node_bytes(full, "up")[1][0]
    blob = compact["mask"]["blob_bytes"]
    for r in range(1, ROUNDS + 1):
        assert per_node_bytes(full, "up")[r] == [model_bytes] * NODES
        assert max(per_node_bytes(compact, "up")[r]) <= 0.61 * model_bytes
    assert per_node_bytes(compact, "down")[1] == [model_bytes + blob] * NODES
    later_down = max(max(per_node_bytes(compact, "down")[r]) for r in range(2, ROUNDS + 1))
    if strategy == "fedpfn":
        assert later_down <= 0.61 * model_bytes
    else:
        assert later_down == model_bytes
    wire = compact["wire"]
    assert wire["total_bytes"] == sum(row["bytes-down"] + row["bytes-up"] for row in wire["rounds"])
    with open(path / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[-1]["mb-cumulative"]) == pytest.approx(wire["total_bytes"] / 1e6)
    assert [float(r["bytes-up"]) for r in rows[1:]] == [row["bytes-up"] for row in wire["rounds"]]


BIN = Path(sys.executable).parent
needs_flower = pytest.mark.skipif(
    not all((BIN / c).exists() for c in ("flower-superlink", "flower-supernode", "flower-superexec", "flwr")),
    reason="needs the flwr 1.42 console scripts in this venv",
)


@needs_flower
def test_localhost_deployment_counts_the_same_bytes_as_simulation(runs, tmp_path):
    out = tmp_path / "run"
    config = default_run_config(NODES, ROUNDS, out)
    config.update({k: v for k, v in run_config(out, "fedpfn", "compact").items() if k != "output-dir"})
    config.update({"node-wait-timeout": 30.0, "round-timeout": 180.0})
    with LocalDeployment(tmp_path / "deployment", num_supernodes=NODES) as deployment:
        run_id = deployment.submit(config)
        status = deployment.wait(run_id, timeout=420.0)
        assert status == "finished:completed", deployment.run_details(run_id)
    deployed = json.loads((out / "metrics.json").read_text())
    _, simulated = runs["fedpfn", "compact"]
    for direction in ("down", "up"):
        assert per_node_bytes(deployed, direction) == per_node_bytes(simulated, direction)
    assert deployed["wire"]["total_bytes"] == simulated["wire"]["total_bytes"]
    assert os.path.getsize(out / "final_model.pt") > 0
