"""Issue 10 with real Flower: a run no client can finish ends in bounded time, and `flwr run`
refuses a bad run config in one log line before the first round.

Few and bounded: one in-process Ray simulation (in a subprocess with a timeout)
and two `flwr run` calls against one local SuperLink (stopped by PID).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest


sys.path.insert(0, str(Path(__file__).parent))
from dirsnap import snapshot  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

ALL_CLIENTS_FAIL = textwrap.dedent("""
    import sys
    from flwr.simulation import run_simulation
    from fedalign.clients.client_app import build_client_app
    from fedalign.config import resolve
    from fedalign.server_app import build_server_app

    config = resolve({"strategy": "fedavg", "model-args": "width=8,depth=1", "num-rounds": 40,
                      "max-failed-rounds": 2, "round-timeout": 60.0, "train-size": 200, "test-size": 100,
                      "output-dir": sys.argv[1], "client-test-eval": False})
    # Every client builds another model than the server sent: each train reply is an error.
    client = build_client_app({**config, "model-args": "width=16,depth=1"})
    try:
        run_simulation(server_app=build_server_app(config), client_app=client, num_supernodes=2,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": 2, "include_dashboard": False}})
    except RuntimeError as err:
        print("RUN FAILED:", repr(err.__cause__))
        sys.exit(3)
""")


def test_run_in_which_no_client_succeeds_ends_in_bounded_time(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               FLWR_HOME=str(tmp_path / "flwr_home"))  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", ALL_CLIENTS_FAIL, str(out)], capture_output=True, text=True,
                          timeout=480, env=env)  # fmt: skip
    seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode == 3, output[-3000:]  # run_simulation raised: the run ended, it did not hang
    refusal = [line for line in output.splitlines() if "fedalign: error: no client returned a usable reply" in line]
    assert len(refusal) == 1 and "2 consecutive rounds" in refusal[0], output[-3000:]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) - 1 < 40, "the run went on after the failed rounds"
    print(f"ended after {seconds:.0f} s with {len(rows) - 1} evaluated rounds")


def flwr_run(env: dict, run_config: str) -> str:
    proc = subprocess.run(
        ["flwr", "run", str(REPO), "--stream", "--run-config", run_config,
         "--federation-config", "num-supernodes=2 client-resources-num-cpus=1"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("run_config, needle", [
    ("rho=1.5 num-rounds=50", "fedalign: error: rho=1.5"),
    ("num-rounds=2 output-dir='{file}'", "is a file, not a directory"),
])  # fmt: skip
def test_flwr_run_refuses_bad_config_in_one_line(local_superlink, tmp_path, run_config, needle):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    before = snapshot(tmp_path)
    output = flwr_run(local_superlink, run_config.format(file=target))
    assert needle in output, output[-3000:]
    assert sum(needle in line for line in output.splitlines()) == 1
    assert "Traceback" not in output, output[-3000:]
    assert "Starting FedPFN strategy" not in output and "[ROUND 1/" not in output, "a round started"
    assert snapshot(tmp_path) == before
    listing = subprocess.run(["flwr", "ls", "--format", "json"], env=local_superlink, cwd=REPO,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    runs = json.loads(listing.stdout).get("runs", [])
    assert runs and "failed" in json.dumps(runs[-1]).lower() or "failed" in listing.stdout.lower(), listing.stdout
