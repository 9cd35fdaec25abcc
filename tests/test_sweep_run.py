"""Real sweeps (Flower + Ray, tiny digits cells): records, report, resume after a kill, repeatability.

Three and a half simulations in all (~15-60 s each, depending on load): one
uninterrupted 2-cell sweep, and its fedpfn cell again (`--only`), killed in
the middle and resumed. The resumed cell is both the kill/resume check and
the "same spec and seed twice gives the same accuracy" check.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

SPEC = {
    "name": "tiny",
    "dataset": "digits",
    "model": "mlp",
    "model-args": {"width": 32, "depth": 1},
    "alphas": [0.5],
    "strategies": ["fedavg", "fedpfn"],
    "seeds": [0],
    "rounds": 3,
    "clients": 3,
    "target-accuracy": 0.5,
}
CELLS = ("alpha0.5__fedavg__seed0", "alpha0.5__fedpfn__seed0")
# Bit-identical final accuracies are expected: the model init, partitions, data
# order and mask are seeded, and with full participation every client trains
# from the same global model whatever order Ray runs them in. The only
# order-dependent step is the server's float32 sum over replies, which arrive
# in completion order; that can change the last bits of a weight, which after
# 3 rounds moves at most a few of the 360 test predictions. One prediction is
# 1/360 = 0.0028, so a real difference (a wrong seed, a resumed cell starting
# from a stale state) shows up well above this tolerance.
TOLERANCE = 3 / 360


def sweep_cmd(spec_path: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fedalign", "sweep", str(spec_path), "--out", str(out), *extra]


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "FLWR_HOME": str(tmp / "flwr"), "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(SPEC))
    return tmp


@pytest.fixture(scope="module")
def full_run(work) -> Path:
    """An uninterrupted sweep of both cells."""
    out = work / "full"
    proc = subprocess.run(sweep_cmd(work / "tiny.yaml", out), capture_output=True, text=True,
                          env=_env(work), timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _record(out: Path, cell: str) -> dict:
    return json.loads((out / "cells" / cell / "record.json").read_text())


def test_sweep_writes_records_tables_plots(full_run):
    sweep = json.loads((full_run / "sweep.json").read_text())
    assert [c["id"] for c in sweep["cells"]] == list(CELLS)
    assert sweep["environment"]["packages"]["flwr"]
    for cell in CELLS:
        rec = _record(full_run, cell)
        assert rec["cell"]["id"] == cell and rec["config"]["seed"] == 0
        assert [r["round"] for r in rec["rounds"]] == [0, 1, 2, 3]
        assert {"accuracy", "loss", "client-test-accuracy", "fusion-gap"} <= set(rec["rounds"][-1])
        assert rec["environment"]["packages"]["torch"]
        assert rec["timing"]["overhead_seconds"] > 0
        assert (full_run / "cells" / cell / "metrics.json").exists()
    assert "fedpfn" in _record(full_run, CELLS[1]).get("config", {}).get("strategy", "")
    # both cells ran in one warm worker: the second reused its Ray runtime and actors
    first, second = (_record(full_run, c)["engine"] for c in CELLS)
    assert (first["warm"], first["cells_before"]) == (False, 0)
    assert (second["warm"], second["cells_before"]) == (True, 1) and second["pid"] == first["pid"]
    summary = (full_run / "summary.md").read_text()
    assert "| alpha | fedavg | fedpfn |" in summary and "| 0.5 |" in summary
    rows = (full_run / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("alpha,strategy,n_seeds") and len(rows) == 3
    for png in ("accuracy_vs_round_alpha0.5.png", "final_accuracy_vs_alpha.png", "fusion_gap_vs_round.png",
                "accuracy_vs_mb_alpha0.5.png"):
        assert (full_run / png).read_bytes()[:4] == b"\x89PNG"
    # bytes on the wire: MB columns, and FedPFN's compact transport sends less than FedAvg
    assert "MB / round | total MB" in summary
    table = {row["strategy"]: row for row in csv.DictReader(io.StringIO("\n".join(rows)))}
    fedavg, fedpfn = (_record(full_run, cell) for cell in CELLS)
    total = lambda rec: sum(r["bytes-down"] + r["bytes-up"] for r in rec["rounds"] if r["round"] > 0) / 1e6  # noqa: E731
    assert float(table["fedavg"]["mb_total"]) == pytest.approx(total(fedavg))
    assert float(table["fedpfn"]["mb_total"]) == pytest.approx(total(fedpfn))
    assert total(fedpfn) < 0.7 * total(fedavg)
    assert fedpfn["wire"]["total_bytes"] == pytest.approx(total(fedpfn) * 1e6)


def test_report_rebuilds_from_records(full_run, work):
    before = (full_run / "summary.md").read_text()
    for name in ("summary.md", "summary.csv", "final_accuracy_vs_alpha.png"):
        (full_run / name).unlink()
    proc = subprocess.run([sys.executable, "-m", "fedalign", "report", str(full_run)],
                          capture_output=True, text=True, env=_env(work), timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (full_run / "summary.md").read_text() == before
    assert (full_run / "final_accuracy_vs_alpha.png").exists()


def test_rerun_skips_finished_cells_and_keeps_records(full_run, work):
    stamps = {c: (full_run / "cells" / c / "record.json").stat().st_mtime_ns for c in CELLS}
    start = time.perf_counter()
    proc = subprocess.run(sweep_cmd(work / "tiny.yaml", full_run), capture_output=True, text=True,
                          env=_env(work), timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "2 of 2 cells already finished" in proc.stderr
    assert time.perf_counter() - start < 30  # no simulation ran
    assert {c: (full_run / "cells" / c / "record.json").stat().st_mtime_ns for c in CELLS} == stamps


def _our_processes(flwr_home: Path) -> list[int]:
    """PIDs whose environment holds this test's FLWR_HOME (the sweep, its child, Ray's processes)."""
    needle = f"FLWR_HOME={flwr_home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_kill_mid_cell_then_resume_matches_uninterrupted_run(full_run, work):
    """Run only the fedpfn cell, SIGKILL the sweep's process group after round 1, run again."""
    out = work / "resumed"
    flwr_home = work / "flwr_kill"
    env = {**_env(work), "FLWR_HOME": str(flwr_home)}
    cmd = sweep_cmd(work / "tiny.yaml", out, "--only", "strategy=fedpfn")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, stdout=subprocess.DEVNULL,
                            env=env, start_new_session=True)  # fmt: skip
    seen = []
    try:
        for line in proc.stderr:  # progress lines (not a TTY: one line per update)
            seen.append(line)
            if "fedpfn seed=0 round 1/3" in line:
                break
        else:
            pytest.fail("the sweep ended before the cell's first round:\n" + "".join(seen[-20:]))
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep's whole process group, Ray included
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        proc.stderr.close()
    killed = out / "cells" / CELLS[1]
    assert killed.exists() and not (killed / "record.json").exists()  # a started cell is not done
    assert not (out / "cells" / CELLS[0]).exists()  # --only left the fedavg cell alone
    deadline = time.monotonic() + 30
    while _our_processes(flwr_home) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _our_processes(flwr_home), "processes of the killed sweep are still running"

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "removed its interrupted run" in rerun.stderr
    # The resumed cell is a second, independent run of the same spec and seed: it must
    # match the uninterrupted sweep round by round. It ran first in a fresh worker,
    # the uninterrupted one second in a warm worker: warm reuse changes no result.
    assert _record(out, CELLS[1])["engine"]["warm"] is False
    want = [r["accuracy"] for r in _record(full_run, CELLS[1])["rounds"]]
    got = [r["accuracy"] for r in _record(out, CELLS[1])["rounds"]]
    assert len(got) == len(want) == 4
    assert got == pytest.approx(want, abs=TOLERANCE), (got, want)
    if got != want:
        print(f"not bit-identical: {got} vs {want}")
