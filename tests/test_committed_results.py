"""The committed result trees under docs/results: every number in their tables recomputes from their records.

A reviewer's check, run on every CI: for each sweep committed with its cell
records (docs/results/<name>/sweep.json + cells/*/record.json, metrics.csv),

- each record's per-round accuracies are the ones in the ServerApp's own metrics.csv;
- the final accuracy of every (alpha, strategy), mean ± std over seeds of the
  mean of the last `last-rounds` rounds, recomputed here from metrics.csv with
  the csv module alone (not the report code), matches summary.csv;
- paired differences against FedAvg, recomputed the same way, match paired.csv;
- "rounds to target" (the first round whose accuracy reaches the spec's
  target-accuracy, averaged over the seeds that reach it) matches summary.csv;
- `fedalign report` rebuilt from the records reproduces summary.csv byte for byte;
- every record ran the configuration sweep.json lists for its cell (rounds, seed, alpha, strategy);
- a record whose training diverged ran every round up to the one it names and
  no further, and counts in the tables as diverged, never in a mean.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest

from fedalign.sweep.report import write_report

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
SWEEPS = sorted(p.parent for p in RESULTS.glob("*/sweep.json"))


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _cells(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in (sweep_dir / "cells").glob("*/record.json"))


def _diverged(cell: Path) -> bool:
    return (json.loads((cell / "record.json").read_text()).get("outcome") or {}).get("status") == "diverged"


def _last_k_mean(metrics_csv: Path, k: int) -> float:
    accs = [float(r["accuracy"]) for r in _rows(metrics_csv) if int(r["round"]) > 0]
    return statistics.fmean(accs[-k:])


def test_results_are_committed():
    names = {p.name for p in SWEEPS}
    assert {"cifar10_quick", "cifar10_dirichlet"} <= names, f"committed sweeps: {sorted(names)}"


@pytest.mark.parametrize("sweep_dir", SWEEPS, ids=[p.name for p in SWEEPS])
def test_records_match_their_metrics_and_the_sweep_config(sweep_dir):
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    planned = {c["id"]: c for c in sweep["cells"]}
    cells = _cells(sweep_dir)
    assert cells, f"{sweep_dir} has no finished cell"
    for cell in cells:
        record = json.loads((cell / "record.json").read_text())
        assert cell.name in planned, f"{cell.name} is not a cell of {sweep_dir}/sweep.json"
        want = planned[cell.name]
        for key in ("alpha", "strategy", "seed"):
            assert record["cell"][key] == want[key], (cell.name, key)
        assert record["config"]["num-rounds"] == sweep["spec"]["rounds"]
        rounds = [r for r in record["rounds"] if int(r["round"]) > 0]
        outcome = record.get("outcome") or {"status": "completed"}
        if outcome["status"] == "diverged":  # its rounds stop between the first diverged one and max-failed-rounds later
            first, tolerated = int(outcome["round"]), int(record["config"]["max-failed-rounds"])
            assert first - 1 <= len(rounds) <= first + tolerated - 2, (cell.name, len(rounds), outcome)
            assert record["final_accuracy"] is None, cell.name
        else:
            assert outcome["status"] == "completed", (cell.name, outcome)
            assert len(rounds) == sweep["spec"]["rounds"], f"{cell.name}: {len(rounds)} rounds"
        from_csv = [float(r["accuracy"]) for r in _rows(cell / "metrics.csv") if int(r["round"]) > 0]
        assert from_csv == pytest.approx([r["accuracy"] for r in rounds], abs=1e-12), cell.name
        assert not list(cell.glob("*.pt")), f"{cell.name}: model files are not committed"


@pytest.mark.parametrize("sweep_dir", SWEEPS, ids=[p.name for p in SWEEPS])
def test_summary_and_paired_tables_recompute_from_metrics_csv(sweep_dir):
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    k = int(sweep["spec"]["last-rounds"])
    finals: dict[tuple[str, str], dict[int, float]] = {}
    diverged: dict[tuple[str, str], int] = {}
    for cell in _cells(sweep_dir):
        c = json.loads((cell / "record.json").read_text())["cell"]
        key = (f"{float(c['alpha']):g}", c["strategy"])
        finals.setdefault(key, {})
        if _diverged(cell):
            diverged[key] = diverged.get(key, 0) + 1
            continue
        finals[key][int(c["seed"])] = _last_k_mean(cell / "metrics.csv", k)
    summary = {(r["alpha"], r["strategy"]): r for r in _rows(sweep_dir / "summary.csv")}
    assert set(summary) == set(finals)
    for key, by_seed in finals.items():
        row, values = summary[key], list(by_seed.values())
        assert int(row["n_seeds"]) == len(values) + diverged.get(key, 0)
        assert int(row["seeds_diverged"]) == diverged.get(key, 0), key
        if not values:
            assert row["final_acc_mean"] == "nan", key
            continue
        assert float(row["final_acc_mean"]) == pytest.approx(statistics.fmean(values), abs=1e-9), key
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        assert float(row["final_acc_std"]) == pytest.approx(std, abs=1e-9), key
    if not (sweep_dir / "paired.csv").exists():
        return
    for row in _rows(sweep_dir / "paired.csv"):
        base, other = finals[(row["alpha"], "fedavg")], finals[(row["alpha"], row["strategy"])]
        seeds = sorted(set(base) & set(other))
        assert seeds, row
        diffs = [other[s] - base[s] for s in seeds]
        assert int(row["n_seeds"]) == len(seeds)
        assert float(row["diff_mean"]) == pytest.approx(statistics.fmean(diffs), abs=1e-9), row


@pytest.mark.parametrize("sweep_dir", SWEEPS, ids=[p.name for p in SWEEPS])
def test_report_rebuilt_from_the_records_is_the_committed_one(sweep_dir, tmp_path):
    copy = tmp_path / sweep_dir.name
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("*.png"))
    for name in ("summary.csv", "summary.md", "paired.csv"):
        (copy / name).unlink(missing_ok=True)
    write_report(copy)
    for name in ("summary.csv", "summary.md"):
        assert (copy / name).read_text() == (sweep_dir / name).read_text(), name


@pytest.mark.parametrize("sweep_dir", SWEEPS, ids=[p.name for p in SWEEPS])
def test_rounds_to_target_recompute_from_metrics_csv(sweep_dir):
    target = json.loads((sweep_dir / "sweep.json").read_text())["spec"].get("target-accuracy")
    if target is None:
        pytest.skip(f"{sweep_dir.name} sets no target-accuracy")
    reached: dict[tuple[str, str], list[int]] = {}
    for cell in _cells(sweep_dir):
        c = json.loads((cell / "record.json").read_text())["cell"]
        rounds = [int(r["round"]) for r in _rows(cell / "metrics.csv")
                  if int(r["round"]) > 0 and float(r["accuracy"]) >= target]
        reached.setdefault((f"{float(c['alpha']):g}", c["strategy"]), []).extend(rounds[:1])
    for row in _rows(sweep_dir / "summary.csv"):
        firsts = reached[(row["alpha"], row["strategy"])]
        assert float(row["target_accuracy"]) == target
        assert int(row["seeds_reaching_target"]) == len(firsts), row["strategy"]
        if firsts:
            assert float(row["rounds_to_target_mean"]) == pytest.approx(statistics.fmean(firsts), abs=1e-9), row["strategy"]
