"""Flower's Deployment Runtime on localhost: real SuperLink, SuperNodes and SuperExecs.

Each test starts the topology of docker/compose.yml as processes
(`fedalign.deploy.localhost.LocalDeployment`, free ports, its own FLWR_HOMEs),
submits FedPFN with `flwr run`, and stops every process by PID on the way out.

* 3 SuperNodes, FedPFN for 3 rounds (insecure) and 2 rounds (TLS + SuperNode
  authentication): the run completes, every round hears from all 3 nodes, and
  the global model's fixed entries are bit-identical to the initial model's.
* A SuperNode killed (SIGKILL, with its ClientApp SuperExec) after round 1:
  with 4 nodes and min-nodes=3 the run goes on with the other three; with
  3 nodes and min-nodes=3 it fails with fedalign's NotEnoughNodesError. A killed
  SuperNode sends no more heartbeats; the SuperLink marks it offline 2 x 30 s
  after its last one (40-60 s after the kill; this wait dominates these two
  tests) and answers the round's message to it with a "Node Unavailable"
  error reply, which ends that round without the node.
"""

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from fedalign.deploy.localhost import CONNECTION, LocalDeployment, default_run_config, main
from fedalign.masks import SubspaceMask, fixed_entries_equal

BIN = Path(sys.executable).parent
CLIS = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr")
needs_flower = pytest.mark.skipif(
    not all((BIN / cli).exists() for cli in CLIS), reason="needs the flwr 1.42 console scripts in this venv"
)
needs_tls_tools = pytest.mark.skipif(
    not (shutil.which("openssl") and shutil.which("ssh-keygen")), reason="needs openssl and ssh-keygen"
)
RUN_TIMEOUT = 420.0  # generous: CI machines are shared; every wait is still bounded


def fast_config(out: Path, nodes: int, rounds: int, **extra) -> dict:
    """FedPFN on a small digits split: the rounds cost ClientApp start-up, not training."""
    config = default_run_config(nodes, rounds, out)
    config.update({
        "train-size": 400, "test-size": 200, "client-test-eval": False,
        "node-wait-timeout": 30.0, "round-timeout": 180.0,
    })
    config.update(extra)
    return config


def assert_fixed_entries_kept(out: Path, rounds: int) -> None:
    record = json.loads((out / "metrics.json").read_text())
    assert [row["round"] for row in record["rounds"] if row["round"] > 0] == list(range(1, rounds + 1))
    assert record["config"]["strategy"] == "fedpfn"
    mask = SubspaceMask.from_bytes((out / "mask.bin").read_bytes())
    initial = torch.load(out / "initial_model.pt", weights_only=True)
    final = torch.load(out / "final_model.pt", weights_only=True)
    assert fixed_entries_equal(mask, final, initial)
    assert any(not torch.equal(final[name], initial[name]) for name in mask.tensors)  # it did train


def round_lines(log: str, server_round: int, rounds: int) -> str:
    """The ServerApp log of one round (from its [ROUND i/n] header to the next)."""
    start = log.index(f"[ROUND {server_round}/{rounds}]")
    end = log.find(f"[ROUND {server_round + 1}/{rounds}]", start)
    return log[start:end if end >= 0 else None]


@pytest.mark.slow
@needs_flower
@pytest.mark.parametrize(
    "tls,auth,rounds",
    [
        pytest.param(False, False, 3, id="insecure"),
        # TLS on every connection + registered SuperNode keys; 2 rounds keep CI time down.
        pytest.param(True, True, 2, id="tls-auth", marks=needs_tls_tools),
    ],
)
def test_fedpfn_on_three_supernodes_completes_and_keeps_fixed_entries(tmp_path, tls, auth, rounds):
    out = tmp_path / "run"
    with LocalDeployment(tmp_path / "deployment", num_supernodes=3, tls=tls, auth=auth) as deployment:
        if auth:  # only registered keys may join
            nodes = deployment.nodes()
            assert len(nodes) == 3 and {n["status"] for n in nodes} == {"online"}
        run_id = deployment.submit(fast_config(out, nodes=3, rounds=rounds))
        status = deployment.wait(run_id, timeout=RUN_TIMEOUT)
        log = deployment.logs(run_id)
        assert status == "finished:completed", deployment.run_details(run_id)
    for server_round in range(1, rounds + 1):
        assert "Received 3 results and 0 failures" in round_lines(log, server_round, rounds)
    assert_fixed_entries_kept(out, rounds=rounds)
    assert deployment.running_groups() == []  # SuperExecs' app processes included


@pytest.mark.slow
@needs_flower
def test_run_goes_on_when_a_supernode_dies_and_enough_remain(tmp_path):
    out = tmp_path / "run"
    with LocalDeployment(tmp_path / "deployment", num_supernodes=4) as deployment:
        run_id = deployment.submit(fast_config(out, nodes=4, rounds=3, **{"min-nodes": 3}))
        # Round 2 has begun once a surviving SuperNode pulls its second train message.
        deployment.wait_for_log("supernode-1", r"Receiving: train message", count=2, timeout=RUN_TIMEOUT)
        deployment.kill_supernode(4)
        status = deployment.wait(run_id, timeout=RUN_TIMEOUT)
        log = deployment.logs(run_id)
        assert status == "finished:completed", deployment.run_details(run_id)
    assert "Received 4 results and 0 failures" in round_lines(log, 1, 3)
    assert "Received 3 results and 1 failures" in round_lines(log, 2, 3)
    assert "Node Unavailable" in round_lines(log, 2, 3)
    last = round_lines(log, 3, 3)
    assert re.search(r"Sampled 3 nodes \(out of 3\)[\s\S]*Received 3 results and 0 failures", last)
    assert_fixed_entries_kept(out, rounds=3)


@pytest.mark.slow
@needs_flower
def test_run_fails_clearly_when_a_supernode_dies_and_too_few_remain(tmp_path):
    out = tmp_path / "run"
    with LocalDeployment(tmp_path / "deployment", num_supernodes=3) as deployment:
        run_id = deployment.submit(fast_config(out, nodes=3, rounds=2, **{"node-wait-timeout": 10.0}))
        # Killed while it holds its round-1 message: round 1 ends without it
        # (heartbeat timeout), round 2 waits 10 s for a third node and gives up.
        deployment.wait_for_log("supernode-3", r"Receiving: train message", count=1, timeout=RUN_TIMEOUT)
        deployment.kill_supernode(3)
        status = deployment.wait(run_id, timeout=RUN_TIMEOUT)
        details = deployment.run_details(run_id)["status-details"]
        deadline = time.monotonic() + 60  # the SuperLink may get the last log lines after the status
        while "fedalign: error:" not in (log := deployment.logs(run_id)) and time.monotonic() < deadline:
            time.sleep(2)
    assert status == "finished:failed"
    assert "only 2 of the 3 nodes this strategy needs connected within 10 s" in details
    # one line, no traceback (fedalign.run_guard)
    assert "fedalign: error: only 2 of the 3 nodes this strategy needs connected" in log
    assert "Traceback" not in log
    assert "Received 2 results and 1 failures" in round_lines(log, 1, 2)
    assert not (out / "final_model.pt").exists()


def test_bad_run_config_fails_before_starting_anything(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--run-config", "strategy='fedsgd'"]) == 2
    assert "unknown strategy 'fedsgd'" in capsys.readouterr().err
    assert not (tmp_path / "deployment").exists()


def test_run_config_file_round_trips_through_flwr(tmp_path):
    """The TOML file `submit` writes parses back to the same values in flwr."""
    from flwr.common.config import parse_config_args

    from fedalign.deploy.localhost import run_config_toml

    config = default_run_config(3, 2, tmp_path / "it's a dir with spaces")
    config.update({"rho": 0.3, "client-test-eval": False, "model-args": 'width=8,name="x"'})
    path = tmp_path / "run-config.toml"
    path.write_text(run_config_toml(config))
    assert parse_config_args([str(path)]) == config


def test_cli_config_points_flwr_at_the_superlink(tmp_path):
    import tomllib

    deployment = LocalDeployment(tmp_path, num_supernodes=1, tls=True)
    deployment.superlink_port = 12345
    deployment._write_cli_config()
    config = tomllib.loads((deployment.cli_home / "config.toml").read_text())
    assert config["superlink"]["default"] == CONNECTION
    assert config["superlink"][CONNECTION] == {
        "address": "127.0.0.1:12345", "root-certificates": str(tmp_path / "certs" / "ca.crt"),
    }
    with pytest.raises(ValueError, match="needs TLS"):
        LocalDeployment(tmp_path, auth=True)
