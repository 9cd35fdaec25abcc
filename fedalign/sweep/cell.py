"""Child process of the sweep runner: run one cell's simulation and write its record.

    python -m fedalign.sweep.cell CELL_DIR [--progress-fd FD]

The sweep runner normally runs cells in a warm worker (`fedalign.sweep.worker`)
through `run_cell_dir`; this entry point runs one cell in a fresh process.
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
        self.started = STARTED
        if fd is not None:
            os.set_inheritable(fd, False)  # Ray's processes must not hold the pipe open
            self.stream = os.fdopen(fd, "w", buffering=1)

    def __call__(self, event: str, **fields) -> None:
        if self.stream is not None:
            self.stream.write(json.dumps({"event": event, "t": time.time() - self.started, **fields}) + "\n")


def timing(rounds: list[dict], started: float, imported: float, sim_start: float, sim_end: float) -> dict:
    """Where the cell's wall time went; overhead = all but steady-state rounds."""
    per_round = [float(r["seconds"]) for r in rounds if int(r["round"]) > 0]
    steady = statistics.median(per_round[1:] or per_round) if per_round else 0.0
    total = time.time() - started
    return {
        "process_seconds": total,
        "import_seconds": imported - started,
        "simulate_seconds": sim_end - sim_start,
        "round_seconds": per_round,
        "steady_round_seconds": steady,
        "overhead_seconds": total - steady * len(per_round),
    }


def run_cell_dir(cell_dir: Path, events: Events, started: float, engine: dict | None = None) -> dict:
    """Run the cell described by CELL_DIR/cell.json; write and return its record.

    `started` is when this cell's work began (process start for a fresh
    process, the request time in a warm worker); `engine` says how it ran.
    """
    job = json.loads((cell_dir / "cell.json").read_text())
    events("start")

    from fedalign.provenance import atomic_write_json, environment
    from fedalign.simulation import simulate

    imported = time.time()

    def on_round(row: dict) -> None:
        events("round", round=int(row["round"]), accuracy=float(row["accuracy"]))

    sim_start = time.time()
    result = simulate(
        job["run_config"], int(job["num_supernodes"]), on_round, float(job["client_cpus"]),
        client_gpus=float(job.get("client_gpus", 0.0)),
    )  # fmt: skip
    sim_end = time.time()
    record = {
        "cell": job["cell"],
        "sweep": job.get("sweep"),
        "num_supernodes": job["num_supernodes"],
        "client_cpus": job["client_cpus"],
        "client_gpus": float(job.get("client_gpus", 0.0)),
        "config": result["config"],
        "environment": environment(),
        "outcome": result.get("outcome", {"status": "completed"}),  # or diverged, at which round
        "rounds": result["rounds"],
        "final_accuracy": result["final_accuracy"],
        "mask": result.get("mask"),
        "wire": result.get("wire"),  # bytes down/up per round and node
        "rejected_replies": result.get("rejected_replies", 0),
        "timing": timing(result["rounds"], started, imported, sim_start, sim_end),
        "engine": {"pid": os.getpid(), **(engine or {"warm": False, "cells_before": 0})},
        "finished": time.time(),
    }
    for key in ("placement",):
        if key in result:
            record[key] = result[key]
    atomic_write_json(cell_dir / "record.json", record)
    events("done", final_accuracy=record["final_accuracy"], timing=record["timing"])
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedalign.sweep.cell")
    parser.add_argument("cell_dir", type=Path)
    parser.add_argument("--progress-fd", type=int, default=None)
    args = parser.parse_args(argv)
    run_cell_dir(args.cell_dir, Events(args.progress_fd), STARTED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
