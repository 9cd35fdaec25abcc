"""Run the missing cells of a sweep in a warm worker process, with a live progress line.

The parent never imports Flower or Ray: cells run in `python -m
fedalign.sweep.worker`, a child that keeps one Ray runtime and its client
actors across cells (`fedalign.warm_ray`) and reports rounds back over a pipe.
A cell that fails ends its worker; the failure is reported, the next cell gets
a fresh worker, and the sweep exits with an error once the others are done.
SIGTERM/Ctrl-C stop the worker (by its PID) and leave every finished record in
place; the next run deletes the interrupted cell's directory and runs it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TextIO

from fedalign.sweep import records
from fedalign.sweep.spec import Cell, cells_of, select


WORKER_LOG = "worker.log"


class CellFailed(RuntimeError):
    """A cell ended without writing its record."""


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """'cells 3/9 | cell alpha=0.1 fedpfn seed=0 round 4/10 | ETA 2m10s' on stderr.

    On a terminal the line is rewritten in place; otherwise each update is a
    line of its own (logs, CI). The ETA uses the wall time of cells finished in
    this run, or before the first one finishes, the current cell's pace.
    """

    def __init__(self, total: int, done: int, rounds: int, stream: TextIO) -> None:
        self.total, self.done, self.rounds, self.stream = total, done, rounds, stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.walls: list[float] = []
        self.cell: Cell | None = None
        self.cell_start = 0.0
        self.first_round_at: float | None = None
        self.round, self.round_at = 0, 0.0

    def _write(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        self._write(text, final=True)

    def start(self, cell: Cell) -> None:
        self.cell, self.cell_start = cell, time.perf_counter()
        self.first_round_at, self.round = None, 0
        self._write(self.line("starting"), final=False)

    def on_round(self, number: int) -> None:
        now = time.perf_counter() - self.cell_start
        if number == 1:
            self.first_round_at = now
        self.round, self.round_at = number, now
        self._write(self.line(f"round {number}/{self.rounds}"), final=False)

    def finish(self, wall: float) -> None:
        self.walls.append(wall)
        self.done += 1

    def cell_estimate(self) -> float | None:
        if self.walls:
            return statistics.mean(self.walls)
        if self.first_round_at is None or self.round < 2:
            return None
        pace = (self.round_at - self.first_round_at) / (self.round - 1)
        return self.first_round_at + pace * (self.rounds - 1)

    def eta(self, running: bool = True) -> str:
        """Time left: the rest of the running cell (if any) plus the cells after it."""
        if self.done >= self.total:
            return "all done"
        estimate = self.cell_estimate()
        if estimate is None:
            return "ETA ?"
        if not running:
            return f"ETA {format_duration(estimate * (self.total - self.done))}"
        elapsed = time.perf_counter() - self.cell_start
        after = self.total - self.done - 1
        return f"ETA {format_duration(max(0.0, estimate - elapsed) + estimate * after)}"

    def line(self, where: str) -> str:
        return f"cells {self.done}/{self.total} | cell {self.cell.label} {where} | {self.eta()}"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the running child is stopped and reported."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def child_env(out: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str((Path(out) / ".flwr").resolve()),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    })  # fmt: skip
    return env


def worker_command(progress_fd: int) -> list[str]:
    return [sys.executable, "-m", "fedalign.sweep.worker", "--progress-fd", str(progress_fd)]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it if the sweep dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop our own child by PID: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _last_error_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return lines[-1][:300] if lines else ""


class Worker:
    """One warm worker process (`fedalign.sweep.worker`) and its progress pipe."""

    def __init__(self, out: Path) -> None:
        read_fd, write_fd = os.pipe()
        self.log = Path(out) / WORKER_LOG
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                worker_command(write_fd),
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, text=True,
                pass_fds=(write_fd,), env=child_env(out), preexec_fn=_die_with_parent,
            )  # fmt: skip
        os.close(write_fd)
        self.events = os.fdopen(read_fd)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, directory: Path, progress: Progress) -> str | None:
        """Run one cell; None when it finished, else why it failed (the worker is then gone)."""
        try:
            self.proc.stdin.write(f"{directory.resolve()}\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return f"the worker exited (code {self.proc.wait()}) before taking the cell"
        for line in self.events:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = event.get("event")
            if kind == "round":
                progress.on_round(int(event["round"]))
            elif kind == "done":
                return None
            elif kind == "failed":
                self.close(grace=30.0)
                return str(event.get("error", "unknown error"))
        code = self.proc.wait()
        return f"{_last_error_line(self.log) or 'the worker process died'} (worker exit code {code}; log {self.log})"

    def close(self, grace: float = 30.0) -> None:
        """End of input: the worker shuts Ray down and exits; stopped by PID if it does not."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        _stop(self.proc)
        self.events.close()


def run_cell(out: Path, cell: Cell, job: Mapping[str, object], progress: Progress, worker: Worker) -> dict:
    """Run `cell` in `worker`; return its record (read back from record.json)."""
    directory = records.cell_dir(out, cell)
    records.write_job(out, cell, job)
    error = worker.run(directory, progress)
    record_path = directory / records.RECORD_FILE
    if error is not None or not record_path.exists():
        log_path = directory / records.LOG_FILE
        detail = _last_error_line(log_path) or error
        raise CellFailed(
            f"cell {cell.label} failed: {detail}; full log: {log_path}; the next run retries it"
        )
    return records.load_record(out, cell)


def job_for(out: Path, spec: Mapping[str, object], cell: Cell) -> dict:
    run_config = {**cell.run_config, "output-dir": str(records.cell_dir(out, cell).resolve())}
    return {
        "cell": cell.to_dict(),
        "sweep": {"name": spec["name"], "out": str(Path(out).resolve())},
        "run_config": run_config,
        "num_supernodes": int(spec["clients"]),
        "client_cpus": float(spec["client-cpus"]),
        "client_gpus": float(spec.get("client-gpus", 0.0)),
    }


def check_devices(spec: Mapping[str, object], cells: list[Cell]) -> None:
    """Refuse a GPU sweep on a machine without one, before anything is written (UsageError)."""
    from fedalign.device import check_device_name

    devices = {str(c.run_config.get("device", "auto")) for c in cells}
    for name in devices:
        check_device_name(name)
    wants_gpu = float(spec.get("client-gpus", 0.0)) > 0 or any(d.startswith("cuda") for d in devices)
    if not wants_gpu or os.environ.get("RAY_ADDRESS"):
        return  # on a cluster the GPUs may be on other machines: Ray places the clients
    from fedalign.device import resolve_device  # imports torch: only for GPU sweeps

    for name in sorted(devices - {"auto", "cpu"}) or ["cuda"]:
        resolve_device(name)


def status(
    out: Path, spec: Mapping[str, object], cells: list[Cell]
) -> dict[str, dict | None]:
    """Finished record (or None) of every cell; nothing is written."""
    if records.check_compatible(out, spec) is None:
        return {c.id: None for c in cells}
    return {c.id: records.load_record(out, c) for c in cells}


def ensure_data(spec: Mapping[str, object], progress: Progress) -> None:
    """`download: true`: fetch the data set into data-dir once, here, before any cell.

    torchvision verifies the archive's md5 and shows a progress bar; files
    already there are not fetched again. Cells then only read.
    """
    from fedalign.datasets import load_raw

    root = Path(str(spec["data-dir"]))
    root.mkdir(parents=True, exist_ok=True)
    progress.say(f"download: making sure {spec['dataset']} is in {root}")
    load_raw(str(spec["dataset"]), root, download=True)


def run_sweep(
    spec: Mapping[str, object],
    out: Path,
    filters: Mapping[str, set[str]] | None = None,
    spec_file: str | None = None,
    stream: TextIO = sys.stderr,
) -> dict:
    """Run every selected cell that has no record yet; return counts and timings."""
    out = Path(out)
    every = cells_of(spec)
    cells = select(every, filters or {})
    check_devices(spec, cells)
    records.prepare(out, spec, every, spec_file)
    finished = status(out, spec, cells)
    todo = [c for c in cells if finished[c.id] is None]
    progress = Progress(len(cells), len(cells) - len(todo), int(spec["rounds"]), stream)
    if todo and spec.get("download"):
        ensure_data(spec, progress)
    if len(todo) < len(cells):
        progress.say(f"{len(cells) - len(todo)} of {len(cells)} cells already finished in {out}; running {len(todo)}")
    started = time.perf_counter()
    overheads: list[float] = []
    failures: list[str] = []
    worker: Worker | None = None
    with _sigterm_as_interrupt():
        try:
            for cell in todo:
                if records.clean_partial(out, cell):
                    progress.say(f"cell {cell.label}: removed its interrupted run; running it again")
                progress.start(cell)
                t0 = time.perf_counter()
                if worker is None or not worker.alive():
                    worker = Worker(out)
                try:
                    record = run_cell(out, cell, job_for(out, spec, cell), progress, worker)
                except CellFailed as err:
                    failures.append(str(err))
                    progress.finish(time.perf_counter() - t0)
                    progress.say(f"cells {progress.done}/{progress.total} | {err} | continuing with the others")
                    continue
                wall = time.perf_counter() - t0
                progress.finish(wall)
                overheads.append(wall - record["timing"]["process_seconds"] + record["timing"]["overhead_seconds"])
                outcome = record.get("outcome", {})
                result = (f"diverged at round {outcome['round']}" if outcome.get("status") == "diverged"
                          else f"accuracy {record['final_accuracy']:.4f}")  # fmt: skip
                progress.say(
                    f"cells {progress.done}/{progress.total} | cell {cell.label} done: "
                    f"{result} after {len(record['rounds']) - 1} rounds in "
                    f"{format_duration(wall)} (startup/teardown {overheads[-1]:.0f}s) | {progress.eta(running=False)}"
                )
        finally:
            if worker is not None:
                worker.close()
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise CellFailed(f"{len(failures)} of {len(todo)} cells failed, the others are recorded: {failures[0]}{more}")
    return {
        "cells": len(cells),
        "ran": len(todo),
        "skipped": len(cells) - len(todo),
        "seconds": time.perf_counter() - started,
        "overhead_seconds": overheads,
    }
