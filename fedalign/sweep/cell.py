"""Child process of the sweep runner: run one cell's simulation and write its record.

    python -m fedalign.sweep.cell CELL_DIR [--progress-fd FD]

Each cell runs in a fresh process so Ray state and memory never leak from one
cell into the next, and killing the sweep loses at most the running cell.
CELL_DIR/cell.json says what to run; progress events go to FD as JSON lines;
CELL_DIR/record.json is written atomically after `simulate` returns, and its
existence is what marks the cell as done.
"""

from __future__ import annotations

import time

STARTED = time.time()  # before the heavy imports: their cost is part of the overhead

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


class Events:
    """JSON lines to the parent's progress pipe (a no-op without one)."""

    def __init__(self, fd: int | None) -> None:
        self.stream = None
        if fd is not None:
            os.set_inheritable(fd, False)  # Ray's processes must not hold the pipe open
            self.stream = os.fdopen(fd, "w", buffering=1)

    def __call__(self, event: str, **fields) -> None:
        if self.stream is not None:
            self.stream.write(json.dumps({"event": event, "t": time.time() - STARTED, **fields}) + "\n")


def timing(rounds: list[dict], imported: float, sim_start: float, sim_end: float) -> dict:
    """Where the cell's wall time went; overhead = all but steady-state rounds."""
    per_round = [float(r["seconds"]) for r in rounds if int(r["round"]) > 0]
    steady = statistics.median(per_round[1:] or per_round) if per_round else 0.0
    total = time.time() - STARTED
    return {
        "process_seconds": total,
        "import_seconds": imported - STARTED,
        "simulate_seconds": sim_end - sim_start,
        "round_seconds": per_round,
        "steady_round_seconds": steady,
        "overhead_seconds": total - steady * len(per_round),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedalign.sweep.cell")
    parser.add_argument("cell_dir", type=Path)
    parser.add_argument("--progress-fd", type=int, default=None)
    args = parser.parse_args(argv)
    events = Events(args.progress_fd)
    job = json.loads((args.cell_dir / "cell.json").read_text())
    events("start")

    from fedalign.provenance import atomic_write_json, environment
    from fedalign.simulation import simulate

    imported = time.time()

    def on_round(row: dict) -> None:
        events("round", round=int(row["round"]), accuracy=float(row["accuracy"]))

    sim_start = time.time()
    result = simulate(job["run_config"], int(job["num_supernodes"]), on_round, float(job["client_cpus"]))
    sim_end = time.time()
    record = {
        "cell": job["cell"],
        "sweep": job.get("sweep"),
        "num_supernodes": job["num_supernodes"],
        "client_cpus": job["client_cpus"],
        "config": result["config"],
        "environment": environment(),
        "rounds": result["rounds"],
        "final_accuracy": result["final_accuracy"],
        "mask": result.get("mask"),
        "wire": result.get("wire"),  # bytes down/up per round and node
        "rejected_replies": result.get("rejected_replies", 0),
        "timing": timing(result["rounds"], imported, sim_start, sim_end),
        "finished": time.time(),
    }
    atomic_write_json(args.cell_dir / "record.json", record)
    events("done", final_accuracy=record["final_accuracy"], timing=record["timing"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
