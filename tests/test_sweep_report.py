"""The sweep report on synthetic cell records: last-5-round means and paired per-seed differences."""

import csv
import shutil
import io
import json

import pytest

from fedalign.sweep.report import write_report

# strategy -> seed -> accuracy of the last 5 rounds (rounds 1-3 are 0.0 and must not count)
LAST5 = {
    "fedavg": {k: [0.30 + 0.01 * k, 0.32 + 0.01 * k, 0.34 + 0.01 * k, 0.36 + 0.01 * k, 0.38 + 0.01 * k]
               for k in (0, 1, 2)},  # means 0.34, 0.35, 0.36
    "fedpfn": {k: [0.40 + 0.02 * k] * 5 for k in (0, 1, 2)},  # means 0.40, 0.42, 0.44
    "fedpnu": {0: [0.35] * 5, 1: [0.37] * 5},  # seed 2 not finished
}  # fmt: skip


def write_records(out, alpha=0.1):
    for strategy, seeds in LAST5.items():
        for seed, last in seeds.items():
            accuracies = [0.1, 0.0, 0.0, 0.0, *last]  # round 0 (initial model), rounds 1..8
            record = {
                "cell": {"alpha": alpha, "strategy": strategy, "seed": seed},
                "rounds": [{"round": r, "accuracy": a} for r, a in enumerate(accuracies)],
            }
            path = out / "cells" / f"a{alpha}-{strategy}-s{seed}" / "record.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(record))


@pytest.fixture
def report(tmp_path):
    write_records(tmp_path)
    paths = write_report(tmp_path)
    return tmp_path, paths


def test_summary_is_mean_and_std_over_seeds_of_the_last_five_rounds(report):
    out, _ = report
    rows = {r["strategy"]: r for r in csv.DictReader(io.StringIO((out / "summary.csv").read_text()))}
    assert float(rows["fedavg"]["final_acc_mean"]) == pytest.approx(0.35)
    assert float(rows["fedavg"]["final_acc_std"]) == pytest.approx(0.01)
    assert float(rows["fedpfn"]["final_acc_mean"]) == pytest.approx(0.42)
    assert float(rows["fedpfn"]["final_acc_std"]) == pytest.approx(0.02)
    assert rows["fedpnu"]["n_seeds"] == "2"
    summary = (out / "summary.md").read_text()
    # fedpnu ran 2 of the 3 seeds: the table says so rather than pass it off as the full mean
    assert "| 0.1 | 0.350 ± 0.010 | 0.420 ± 0.020 | 0.360 ± 0.014 (2/3 seeds) |" in summary


def test_one_seed_shows_its_value_without_a_spread(tmp_path):
    write_records(tmp_path)
    for cell in (tmp_path / "cells").iterdir():
        if not cell.name.endswith("-s0"):
            shutil.rmtree(cell)
    write_report(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "| 0.1 | 0.340 | 0.400 | 0.350 |" in summary  # seed 0 of each; no "± 0.000"
    assert "± 0.000" not in summary  # nor in the paired or the details table
    assert "| 0.1 | fedpfn − fedavg | +0.060 | 1 | 0: +0.060 |" in summary


def test_paired_differences_are_per_seed(report):
    out, paths = report
    assert "paired.csv" in paths
    rows = {r["strategy"]: r for r in csv.DictReader(io.StringIO((out / "paired.csv").read_text()))}
    assert set(rows) == {"fedpfn", "fedpnu"}
    pfn = rows["fedpfn"]  # differences 0.06, 0.07, 0.08
    assert (pfn["baseline"], pfn["n_seeds"], pfn["seeds"]) == ("fedavg", "3", "0 1 2")
    assert float(pfn["diff_mean"]) == pytest.approx(0.07)
    assert float(pfn["diff_std"]) == pytest.approx(0.01)
    pnu = rows["fedpnu"]  # seeds 0 and 1 only: 0.01, 0.02
    assert pnu["n_seeds"] == "2"
    assert float(pnu["diff_mean"]) == pytest.approx(0.015)
    assert float(pnu["diff_std"]) == pytest.approx(0.0070711, abs=1e-6)
    summary = (out / "summary.md").read_text()
    assert "| 0.1 | fedpfn − fedavg | +0.070 ± 0.010 | 3 | 0: +0.060, 1: +0.070, 2: +0.080 |" in summary
    assert "| 0.1 | fedpnu − fedavg | +0.015 ± 0.007 | 2 |" in summary


def test_no_paired_section_without_the_baseline(tmp_path):
    write_records(tmp_path)
    for path in (tmp_path / "cells").glob("*fedavg*/record.json"):
        path.unlink()
    paths = write_report(tmp_path)
    assert "paired.csv" not in paths
    assert "Paired differences" not in (tmp_path / "summary.md").read_text()


def diverge(out, cell_name, at_round):
    """Turn a synthetic record into one whose training diverged at `at_round` (rounds after it dropped)."""
    path = out / "cells" / cell_name / "record.json"
    record = json.loads(path.read_text())
    record["rounds"] = record["rounds"][:at_round]
    record["outcome"] = {"status": "diverged", "round": at_round}
    path.write_text(json.dumps(record))


def test_diverged_seeds_are_counted_not_averaged(tmp_path):
    write_records(tmp_path)
    diverge(tmp_path, "a0.1-fedpfn-s2", 3)  # fedpfn: seeds 0 and 1 finish (0.40, 0.42)
    for seed, at_round in ((0, 2), (1, 4)):  # fedpnu: every seed it ran diverged
        diverge(tmp_path, f"a0.1-fedpnu-s{seed}", at_round)
    write_report(tmp_path)
    rows = {r["strategy"]: r for r in csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text()))}
    assert float(rows["fedpfn"]["final_acc_mean"]) == pytest.approx(0.41)
    assert float(rows["fedpfn"]["final_acc_std"]) == pytest.approx(0.01414, abs=1e-5)
    assert (rows["fedpfn"]["seeds_diverged"], rows["fedpfn"]["diverged_rounds"]) == ("1", "3")
    assert rows["fedpnu"]["final_acc_mean"] == "nan"
    assert (rows["fedpnu"]["seeds_diverged"], rows["fedpnu"]["diverged_rounds"]) == ("2", "2 4")
    summary = (tmp_path / "summary.md").read_text()
    assert (
        "| 0.1 | 0.350 ± 0.010 | 0.410 ± 0.014; diverged (1/3 seeds, round 3) "
        "| diverged (2/2 seeds, rounds 2-4) (2/3 seeds) |"
    ) in summary
    paired = {r["strategy"]: r for r in csv.DictReader(io.StringIO((tmp_path / "paired.csv").read_text()))}
    assert paired["fedpfn"]["seeds"] == "0 1"  # the diverged seed has no difference to pair
    assert float(paired["fedpfn"]["diff_mean"]) == pytest.approx((0.40 - 0.34 + 0.42 - 0.35) / 2)
    assert "fedpnu" not in paired  # no seed finished: no difference at all, not a NaN row
    assert "| 0.1 | fedpfn | 3 (1 diverged) | 0.410 ± 0.014 |" in summary
