"""The committed LMC studies under docs/results: their tables recompute from their cell records.

A reviewer's check, run on every CI, for each docs/results/<name>/ holding an
LMC study (results.json + cells/*.json, written by `fedalign lmc`):

- results.json lists exactly the committed cell files, with the same content;
- each cell's accuracy and loss barriers and midpoint accuracy, recomputed
  here from its interpolation curve with SPEC §3's formulas, are its metrics;
- table.csv's mean ± std over seeds, recomputed with the statistics module
  (not the report code), and table.md rebuilt by the report code, are the
  committed ones.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import pytest

from fedalign.lmc_study.report import markdown_table, rows_of

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
STUDIES = sorted(p.parent for p in RESULTS.glob("*/results.json") if (p.parent / "cells").is_dir())


def _cells(study: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((study / "cells").glob("*.json"))}


def _record(study: Path) -> dict:
    return json.loads((study / "results.json").read_text())


def test_lmc_studies_are_committed():
    assert {"lmc_cifar10", "lmc_cifar10_rho"} <= {p.name for p in STUDIES}


@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
def test_record_lists_exactly_the_committed_cells(study):
    record, cells = _record(study), _cells(study)
    assert {c["cell"] for c in record["cells"]} == set(cells)
    for c in record["cells"]:
        assert c == cells[c["cell"]], c["cell"]
    seeds = sorted({c["seed"] for c in cells.values()})
    assert seeds == sorted(record["seeds"]), "results.json was built from other seeds than its cells"


@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
def test_barriers_recompute_from_each_cells_curve(study):
    for name, cell in _cells(study).items():
        for part in filter(None, (cell["plain"], cell["matched"])):
            curve, m = part["curve"], part["metrics"]
            alphas, accs, losses = curve["alphas"], curve["accuracies"], curve["losses"]
            acc_gap = [(1 - a) * accs[0] + a * accs[-1] - acc for a, acc in zip(alphas, accs)]
            loss_gap = [loss - ((1 - a) * losses[0] + a * losses[-1]) for a, loss in zip(alphas, losses)]
            assert math.isclose(m["acc_barrier"], max(acc_gap), abs_tol=1e-9), name
            assert math.isclose(m["loss_barrier"], max(loss_gap), abs_tol=1e-6), name
            assert math.isclose(m["midpoint_acc"], accs[alphas.index(0.5)], abs_tol=1e-9), name
            assert (m["acc_a"], m["acc_b"]) == (accs[0], accs[-1]), name


@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
def test_table_csv_recomputes_from_the_cells(study):
    groups: dict[str, list[dict]] = defaultdict(list)
    for cell in _cells(study).values():
        groups[cell["label"]].append(cell["plain"]["metrics"])
        if cell["matched"]:
            groups[cell["label"] + " + WM"].append(cell["matched"]["metrics"])
    with (study / "table.csv").open(newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(groups)
    for method, metrics in groups.items():
        row = rows[method]
        assert int(row["seeds"]) == len(metrics)
        for key in ("acc_a", "acc_b", "acc_barrier", "loss_barrier", "midpoint_acc", "fused_acc"):
            values = [m[key] for m in metrics]
            assert math.isclose(float(row[f"{key}_mean"]), statistics.fmean(values), rel_tol=1e-5, abs_tol=1e-6)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            assert math.isclose(float(row[f"{key}_std"]), std, rel_tol=1e-5, abs_tol=1e-6), (method, key)


@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
def test_table_md_rebuilt_from_the_record_is_the_committed_one(study):
    assert markdown_table(rows_of(_record(study)["cells"])) == (study / "table.md").read_text()
