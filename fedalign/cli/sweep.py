"""`fedalign sweep`: run a heterogeneity sweep (alpha x strategy x seed) from a YAML spec.

    fedalign sweep experiments/demo.yaml                  # -> outputs/demo/summary.md
    fedalign sweep experiments/demo.yaml --dry-run        # list the cells, run nothing
    fedalign sweep experiments/cifar10_dirichlet.yaml --only alpha=0.1 --only seed=0
    fedalign sweep experiments/cifar10_dirichlet.yaml --set rounds=10 --out outputs/cifar10_r10

Each cell is one Flower simulation (Ray backend); the cells run one after
another in a warm worker process that keeps Ray and the client actors up, and
a failing cell ends only its worker. Re-running the same command resumes:
finished cells are kept, only missing ones run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run a heterogeneity sweep of Flower simulations from a YAML spec (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", help="YAML spec, e.g. experiments/demo.yaml (keys: docs/sweep.md)")
    p.add_argument("--out", help="output directory (default outputs/<spec name>)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and whether they are done; run nothing")
    p.add_argument(
        "--only", action="append", metavar="KEY=VALUES",
        help="run only matching cells: alpha=0.1, strategy=fedpfn,fedpnu or seed=0 (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", dest="sets",
        help="override a spec key, e.g. --set rounds=10 (recorded in sweep.json; use a new --out)",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedalign.safe_yaml import load_yaml_mapping

    load_yaml_mapping(args.spec)  # refuse a bad file before Flower and torch are imported
    from fedalign.sweep import CellFailed, cells_of, load_spec, run_sweep, write_report
    from fedalign.preflight import check_output_dir, check_sweep
    from fedalign.sweep.records import check_compatible
    from fedalign.sweep.runner import format_duration, status
    from fedalign.sweep.spec import parse_filters, parse_sets, select

    spec = load_spec(args.spec, parse_sets(args.sets))
    filters = parse_filters(args.only)
    out = Path(args.out) if args.out else Path("outputs") / str(spec["name"])
    cells = select(cells_of(spec), filters)
    check_output_dir(out)
    if args.dry_run:
        done = status(out, spec, cells)
        for c in cells:
            print(f"{'done' if done[c.id] else 'todo'}  {c.id}  ({c.label})")
        todo = sum(1 for c in cells if not done[c.id])
        print(
            f"{len(cells)} cells, {todo} to run, {spec['rounds']} rounds x {spec['clients']} clients each; "
            f"output {out}"
        )
        return 0
    check_compatible(out, spec)  # another spec's results there: refuse before any work
    check_sweep(spec)  # data, model, client split, CPUs: refuse before the first cell starts
    try:
        result = run_sweep(spec, out, filters, spec_file=args.spec)
    except CellFailed as err:
        print(f"fedalign sweep: error: {err}", file=sys.stderr)
        return 1
    paths = write_report(out)
    print(paths["summary.md"].read_text(), end="")
    print(
        f"\nran {result['ran']} cell(s), {result['skipped']} already finished, in "
        f"{format_duration(result['seconds'])}; report: {paths['summary.md']} (tables, plots in {out})"
    )
    return 0
