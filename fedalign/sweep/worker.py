"""Warm worker of the sweep runner: runs cells one after another in one Ray runtime.

    python -m fedalign.sweep.worker [--progress-fd FD]

Reads one cell directory per line on stdin and runs it like
`fedalign.sweep.cell` would, but inside `fedalign.warm_ray.warm_engine()`, so
Python, torch, Ray and the client actors start once per worker instead of once
per cell. Each cell's output goes to its own CELL_DIR/log.txt. A cell that
fails ends the worker (exit code 3, after a "failed" event): the runner starts
a fresh worker for the next cell, so a broken actor pool or a leaked thread
never reaches another cell. End of stdin shuts Ray down and exits 0.
"""

from __future__ import annotations

import time

STARTED = time.time()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

from fedalign.sweep.cell import Events, run_cell_dir  # noqa: E402
from fedalign.sweep.records import LOG_FILE  # noqa: E402

EXIT_CELL_FAILED = 3


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Point this process's stdout and stderr (fds 1 and 2, so Ray and Flower too) at `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedalign.sweep.worker")
    parser.add_argument("--progress-fd", type=int, default=None)
    args = parser.parse_args(argv)
    events = Events(args.progress_fd)

    from fedalign.warm_ray import warm_engine

    done, code = 0, 0
    with warm_engine():
        while code == 0:
            line = sys.stdin.readline()
            if not line:
                break
            cell_dir = Path(line.strip())
            started = time.time()
            events.started = started
            engine = {"warm": done > 0, "cells_before": done, "worker_started": STARTED}
            with output_to(cell_dir / LOG_FILE):
                try:
                    run_cell_dir(cell_dir, events, STARTED if done == 0 else started, engine)
                except BaseException as err:  # noqa: BLE001 - reported, then the worker ends
                    traceback.print_exc()
                    events("failed", error=f"{type(err).__name__}: {err}"[:500])
                    code = EXIT_CELL_FAILED
                    continue
            done += 1
    if code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # a failed simulation may leave non-daemon threads behind
    return 0


if __name__ == "__main__":
    sys.exit(main())
