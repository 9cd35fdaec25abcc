"""Run one federated cell in Flower's Simulation Runtime (Ray backend), in process.

`flwr run .` is the user-facing way to run the app; this is the programmatic
one the sweep runner uses: the same ServerApp/ClientApp, the same Ray-backed
engine, but the run config passed in and the record returned, with a callback
per round for progress.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from fedalign import simulated_nodes, warm_ray
from fedalign.config import resolve
from fedalign.light_actor import light_actors
from fedalign.quick_poll import quick_polling
from fedalign.server_app import RoundCallback


def simulate(
    run_config: Mapping[str, object],
    num_supernodes: int,
    on_round: RoundCallback | None = None,
    client_cpus: float = 1.0,
    verbose: bool = False,
    client_gpus: float = 0.0,
) -> dict:
    """Run the cell; return the record written to `<output-dir>/metrics.json`.

    Inside `fedalign.warm_ray.warm_engine()` the Ray runtime and client actors
    of the previous call are reused (the sweep worker runs many cells that way).
    """
    from flwr.simulation import run_simulation

    from fedalign.clients.client_app import build_client_app
    from fedalign.run_setup import partitions_for
    from fedalign.server_app import build_server_app

    config = resolve(run_config)
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    # Joining an existing Ray cluster (RAY_ADDRESS) must not declare local resources.
    init_args = {} if os.environ.get("RAY_ADDRESS") else {
        "num_cpus": max(1, os.cpu_count() or 1), "include_dashboard": False,
    }
    # Partitions computed here land in the disk cache, so the actors read them
    # instead of each importing flwr-datasets (~120 MB per actor; fedalign.datasets.cache).
    partitions = partitions_for(config, int(num_supernodes))
    # Local training is per example: the largest partitions are dispatched first (fedalign.quick_poll).
    with (
        quick_polling(work_of=lambda pid: len(partitions[pid])),
        light_actors(),  # actors without Flower's server-side imports (~47 MiB each)
        simulated_nodes.recorded_partitions(),
    ):
        run_simulation(
            server_app=build_server_app(config, on_round=on_round),
            client_app=build_client_app(config),
            num_supernodes=int(num_supernodes),
            backend_config={
                "client_resources": {"num_cpus": client_cpus, "num_gpus": float(client_gpus)},
                "init_args": init_args,
            },
        )
    warm_ray.mark_healthy()
    record_path = Path(str(config["output-dir"])).expanduser().resolve() / "metrics.json"
    if not record_path.exists():
        raise RuntimeError(f"the simulation ended without writing {record_path}; see the log above")
    return json.loads(record_path.read_text())
