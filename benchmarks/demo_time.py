"""Wall time of the digits demo (`fedalign sweep experiments/demo.yaml`), as a new user runs it.

    python benchmarks/demo_time.py                                  # this checkout
    git worktree add /tmp/before 475372c^                           # the per-process runner
    python benchmarks/demo_time.py --checkout /tmp/before --checkout .

Runs the demo once per checkout, one after another, each with its own output
directory and an empty `$FEDALIGN_CACHE` (a first run decodes and partitions
everything; `--warm-cache` keeps one cache for all), timed from process start
to exit, report included. The checkout's own code runs (PYTHONPATH, also
inherited by Ray's actors) with this venv's Python. Prints one row per
checkout: the demo's wall time, the first cell's and the median other cell's
process seconds (record.json `timing`, where the checkout records it), and
how many cells' per-round accuracies equal the first checkout's.
Compare only rows from one invocation on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_demo(checkout: Path, out: Path, cache: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(checkout), FEDALIGN_CACHE=str(cache))
    cmd = [sys.executable, "-m", "fedalign", "sweep", "experiments/demo.yaml", "--out", str(out)]
    t0 = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"demo failed in {checkout} (exit {proc.returncode}); see {out.parent / (out.name + '.log')}")
    return wall


def cells(out: Path) -> dict[str, dict]:
    """Per cell: per-round accuracies and the cell's process seconds (when recorded)."""
    found = {}
    for cell in sorted((out / "cells").iterdir()):
        metrics = json.loads((cell / "metrics.json").read_text())
        record = cell / "record.json"
        timing = json.loads(record.read_text()).get("timing", {}) if record.exists() else {}
        found[cell.name] = {
            "accuracies": [r.get("accuracy") for r in metrics["rounds"]],
            "seconds": timing.get("process_seconds"),
        }
    return found


def commit(checkout: Path) -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True)
    return proc.stdout.strip() or "?"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkout", action="append", type=Path, help="a fedalign checkout (repeatable; default: this one)")
    p.add_argument("--warm-cache", action="store_true", help="share one data cache across the runs")
    args = p.parse_args()
    checkouts = [c.resolve() for c in (args.checkout or [ROOT])]
    work = Path(tempfile.mkdtemp(prefix="fedalign-demo-time-"))
    print(f"outputs and logs under {work}", file=sys.stderr)
    rows, reference = [], None
    for i, checkout in enumerate(checkouts):
        cache = work / ("cache" if args.warm_cache else f"cache{i}")
        out = work / f"run{i}"
        print(f"running the demo in {checkout} ...", file=sys.stderr)
        wall = run_demo(checkout, out, cache)
        found = cells(out)
        reference = reference or found
        same = sum(found.get(name, {}).get("accuracies") == ref["accuracies"] for name, ref in reference.items())
        secs = [c["seconds"] for c in found.values()]
        first = f"{secs[0]:.1f}" if secs[0] is not None else "-"
        rest = [s for s in secs[1:] if s is not None]
        rows.append((checkout, commit(checkout), wall, len(found), first,
                     f"{statistics.median(rest):.1f}" if rest else "-", f"{same}/{len(reference)}"))
    print("| checkout | commit | demo wall s | cells | first cell s | median other cell s | per-round accuracies = first row |")
    print("|---|---|---|---|---|---|---|")
    for checkout, rev, wall, n, first, rest, same in rows:
        print(f"| {checkout} | {rev} | {wall:.1f} | {n} | {first} | {rest} | {same} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
